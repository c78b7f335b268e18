"""Server-side unmasking: rebuild secrets from released shares and strip masks in place.

Survivors' pairwise masks cancel in the sum. What remains are (``chronos-dm``) the survivors'
self masks and the pairwise masks between survivors and non-survivors; the server regenerates
exactly those, never an ``n x d`` array.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from qflare.crypto import MaskPrg, RingVector, SecretBytes, Shamir, ShamirError, X25519KeyPair
from qflare.protocol.chronos import keys
from qflare.protocol.chronos import messages as m


def collect_shares(
    responses: Mapping[int, m.UnmaskShares], owner: int, *, self_mask: bool
) -> dict[int, bytes]:
    """Shares of ``owner``'s secret released by the responding holders, by evaluation point."""
    shares: dict[int, bytes] = {}
    for holder, resp in responses.items():
        table = resp.self_mask_shares if self_mask else resp.key_shares
        share = table.get(owner)
        if share is not None:
            shares[keys.holder_x(holder)] = share
    return shares


def reconstruct_key(
    cfg: m.EpochConfig,
    responses: Mapping[int, m.UnmaskShares],
    advert: m.EpochKeys,
    round_id: int,
) -> SecretBytes:
    """Rebuild the mask private key that masked ``round_id`` for ``advert.sender``.

    Raises:
        ShamirError: too few shares, or the result does not match the signed public key.
    """
    sk = Shamir(cfg.t).combine(collect_shares(responses, advert.sender, self_mask=False))
    if X25519KeyPair(sk).public != advert.mask_pks[cfg.key_index(round_id)]:
        raise ShamirError(f"reconstructed key of client {advert.sender} does not match its keys")
    return sk


def remove_self_masks(
    acc: RingVector,
    cfg: m.EpochConfig,
    round_id: int,
    survivors: Iterable[int],
    responses: Mapping[int, m.UnmaskShares],
    prg: MaskPrg,
) -> None:
    """Subtract each survivor's self mask of ``round_id`` (``chronos-dm``).

    Raises:
        ShamirError: a survivor's self-mask secret has fewer than ``t`` shares.
    """
    shamir = Shamir(cfg.t)
    for u in sorted(survivors):
        secret = shamir.combine(collect_shares(responses, u, self_mask=True))
        prg.sub_into(acc, keys.self_mask_seed(cfg, secret, round_id))


def remove_pair_masks(
    acc: RingVector,
    cfg: m.EpochConfig,
    round_id: int,
    keys_of: Mapping[int, SecretBytes],
    survivors: frozenset[int],
    partners: Mapping[int, frozenset[int]],
    adverts: Mapping[int, m.EpochKeys],
    prg: MaskPrg,
) -> None:
    """Subtract the masks surviving partners of each non-survivor ``d`` added for ``d``.

    Args:
        acc: The running sum of the round's masked inputs (modified in place).
        cfg: The epoch configuration.
        round_id: The round being unmasked.
        keys_of: Non-survivor id -> its mask private key for this round.
        survivors: Clients whose masked inputs are in ``acc``.
        partners: Each client's mask partners this epoch.
        adverts: The signed epoch keys of every client.
        prg: Mask expander of the round's shape.
    """
    ki = cfg.key_index(round_id)
    for d, sk in sorted(keys_of.items(), key=lambda kv: kv[0]):
        for v in sorted(partners.get(d, frozenset()) & survivors):
            pair = keys.pair_key(cfg, sk, adverts[v].mask_pks[ki], d, v, ki)
            prg.apply(acc, keys.round_seed(cfg, pair, d, v, round_id), -keys.pair_sign(v, d))
