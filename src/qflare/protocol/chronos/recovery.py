"""Server-side unmasking: check released shares, rebuild secrets, strip masks in place.

Survivors' pairwise masks cancel in the sum. What remains are (``chronos-dm``) the survivors'
self masks and the pairwise masks between survivors and non-survivors; the server regenerates
exactly those, never an ``n x d`` array. Every released share is checked against the commitment
its owner published in O1 when a rebuilt secret fails its check (against the owner's commitment
or public key), so a bad share is dropped and named instead of changing the sum.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Mapping

from qflare.crypto import MaskPrg, RingVector, SecretBytes, X25519KeyPair
from qflare.crypto.shamir import SHARE_BYTES
from qflare.protocol.chronos import keys
from qflare.protocol.chronos import messages as m
from qflare.protocol.shares import (
    COMMITMENT_BYTES,
    ReconstructionError,
    SharedSecret,
    rebuild_secret,
)

__all__ = [
    "ReconstructionError",
    "collect_shares",
    "reconstruct_key",
    "remove_pair_masks",
    "remove_self_masks",
    "self_mask_secrets",
]


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


def _secret(
    cfg: m.EpochConfig,
    responses: Mapping[int, m.UnmaskShares],
    commitments: Mapping[int, Mapping[int, bytes]],
    owner: int,
    kind: str,
    check: Callable[[SecretBytes], bool],
) -> SharedSecret:
    self_mask = kind.startswith("self")
    released = {
        h: share
        for h, resp in responses.items()
        if (share := (resp.self_mask_shares if self_mask else resp.key_shares).get(owner))
    }
    return SharedSecret(
        keys.scope(cfg),
        owner,
        kind,
        released,
        keys.holder_x,
        lambda holder: _commitment(cfg, commitments, owner, holder, kind),
        check,
    )


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


def reconstruct_key(
    cfg: m.EpochConfig,
    responses: Mapping[int, m.UnmaskShares],
    advert: m.EpochKeys,
    round_id: int,
    commitments: Mapping[int, Mapping[int, bytes]] | None = None,
    culprits: dict[int, str] | None = None,
) -> SecretBytes:
    """Rebuild the mask private key that masked ``round_id`` for ``advert.sender``.

    Raises:
        ReconstructionError: too few good shares, or a key that does not match the signed one.
    """
    want = advert.mask_pks[cfg.key_index(round_id)]

    def check(sk: SecretBytes) -> bool:
        return X25519KeyPair(sk).public == want

    kind = f"key{cfg.key_index(round_id)}"
    secret = _secret(cfg, responses, commitments or {}, advert.sender, kind, check)
    return rebuild_secret(secret, cfg.t, {} if culprits is None else culprits, f"round {round_id}")


def self_mask_secrets(
    cfg: m.EpochConfig,
    round_id: int,
    survivors: Iterable[int],
    responses: Mapping[int, m.UnmaskShares],
    commits: Mapping[int, tuple[bytes, ...]],
    commitments: Mapping[int, Mapping[int, bytes]],
    culprits: dict[int, str],
) -> dict[int, SecretBytes]:
    """Each survivor's self-mask secret of ``round_id``, checked against its commitment.

    Raises:
        ReconstructionError: too few good shares, or a secret its owner did not commit to.
    """
    index = round_id - cfg.first_round
    out: dict[int, SecretBytes] = {}
    for u in sorted(survivors):
        expected = commits.get(u, ())
        want = expected[index] if index < len(expected) else b""

        def check(secret: SecretBytes, u: int = u, want: bytes = want) -> bool:
            mine = keys.self_mask_commitment(cfg, u, index, secret)
            return bool(want) and hmac.compare_digest(mine, want)

        secret = _secret(cfg, responses, commitments, u, f"self{index}", check)
        out[u] = rebuild_secret(secret, cfg.t, culprits, f"round {round_id}")
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
