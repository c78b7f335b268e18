"""Server-side unmasking: check released shares, rebuild secrets, strip masks in place.

Survivors' pairwise masks cancel in the sum. What remains are (``chronos-dm``) the survivors'
self masks and the pairwise masks between survivors and non-survivors; the server regenerates
exactly those, never an ``n x d`` array. Every released share is checked against the commitment
its owner published in O1 (:func:`check_released`), and every rebuilt secret against its owner's
commitment or public key, so a bad share is dropped and named instead of changing the sum.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping

import msgspec

from qflare.crypto import MaskPrg, RingVector, SecretBytes, Shamir, ShamirError, X25519KeyPair
from qflare.crypto.shamir import SHARE_BYTES
from qflare.protocol.chronos import keys
from qflare.protocol.chronos import messages as m
from qflare.protocol.shares import COMMITMENT_BYTES, opened_share


class ReconstructionError(ShamirError):
    """A secret of ``owner`` could not be rebuilt from good shares.

    Args:
        owner: The client whose secret failed.
        why: What went wrong.
    """

    def __init__(self, owner: int, why: str) -> None:
        super().__init__(f"client {owner}: {why}")
        self.owner = owner


def _commitment(
    cfg: m.EpochConfig,
    commitments: Mapping[int, Mapping[int, bytes]],
    owner: int,
    holder: int,
    kind: str,
) -> bytes:
    index = keys.share_kinds(cfg).index(kind)
    both = commitments.get(owner, {}).get(holder, b"")
    return both[index * COMMITMENT_BYTES : (index + 1) * COMMITMENT_BYTES]


def check_released(
    cfg: m.EpochConfig,
    msg: m.UnmaskShares,
    commitments: Mapping[int, Mapping[int, bytes]],
) -> tuple[m.UnmaskShares, set[int]]:
    """Split a holder's released shares into those matching their commitments and the rest."""
    ri, ki = msg.round_id - cfg.first_round, cfg.key_index(msg.round_id)
    scope, holder, bad = keys.scope(cfg), msg.sender, set()

    def good(table: Mapping[int, bytes], kind: str) -> dict[int, bytes]:
        out = {}
        for owner, released in table.items():
            commit = _commitment(cfg, commitments, owner, holder, kind)
            if opened_share(scope, owner, holder, kind, released, commit) is None:
                bad.add(owner)
            else:
                out[owner] = released
        return out

    kept = msgspec.structs.replace(
        msg,
        self_mask_shares=good(msg.self_mask_shares, f"self{ri}"),
        key_shares=good(msg.key_shares, f"key{ki}"),
    )
    return kept, bad


def collect_shares(
    responses: Mapping[int, m.UnmaskShares], owner: int, *, self_mask: bool
) -> dict[int, bytes]:
    """Shares of ``owner``'s secret released by the responding holders, by evaluation point."""
    shares: dict[int, bytes] = {}
    for holder, resp in responses.items():
        table = resp.self_mask_shares if self_mask else resp.key_shares
        share = table.get(owner)
        if share is not None:
            shares[keys.holder_x(holder)] = share[:SHARE_BYTES]
    return shares


def _combine(cfg: m.EpochConfig, shares: dict[int, bytes], owner: int) -> SecretBytes:
    try:
        return Shamir(cfg.t).combine(shares)
    except ShamirError as exc:
        raise ReconstructionError(owner, str(exc)) from None


def reconstruct_key(
    cfg: m.EpochConfig,
    responses: Mapping[int, m.UnmaskShares],
    advert: m.EpochKeys,
    round_id: int,
) -> SecretBytes:
    """Rebuild the mask private key that masked ``round_id`` for ``advert.sender``.

    Raises:
        ReconstructionError: too few shares, or the result does not match the signed public key.
    """
    owner = advert.sender
    sk = _combine(cfg, collect_shares(responses, owner, self_mask=False), owner)
    if X25519KeyPair(sk).public != advert.mask_pks[cfg.key_index(round_id)]:
        raise ReconstructionError(owner, "reconstructed key does not match its advertised key")
    return sk


def self_mask_secrets(
    cfg: m.EpochConfig,
    round_id: int,
    survivors: Iterable[int],
    responses: Mapping[int, m.UnmaskShares],
    commits: Mapping[int, tuple[bytes, ...]],
) -> dict[int, SecretBytes]:
    """Each survivor's self-mask secret of ``round_id``, checked against its commitment.

    Raises:
        ReconstructionError: too few good shares, or a secret its owner did not commit to.
    """
    index = round_id - cfg.first_round
    out: dict[int, SecretBytes] = {}
    for u in sorted(survivors):
        secret = _combine(cfg, collect_shares(responses, u, self_mask=True), u)
        expected = commits.get(u, ())
        mine = keys.self_mask_commitment(cfg, u, index, secret)
        if index >= len(expected) or not hmac.compare_digest(mine, expected[index]):
            raise ReconstructionError(u, "self-mask secret does not match its commitment")
        out[u] = secret
    return out


def remove_self_masks(
    acc: RingVector,
    cfg: m.EpochConfig,
    round_id: int,
    secrets: Mapping[int, SecretBytes],
    prg: MaskPrg,
) -> None:
    """Subtract each survivor's self mask of ``round_id`` (``chronos-dm``)."""
    for u in sorted(secrets):
        prg.sub_into(acc, keys.self_mask_seed(cfg, secrets[u], round_id))


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
