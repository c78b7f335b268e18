"""Final unmasking: check released shares, reconstruct secrets, strip the masks from the sum.

Every share a holder releases in R4 is checked against the commitment its owner signed in R1
(:func:`check_released`), so a wrong or malformed share is dropped and its sender named, and any
``t`` of the remaining shares reconstruct the secret. The result is checked too: a self-mask
secret against its owner's commitment, a mask key against the owner's advertised public key. A
mismatch there means the owner dealt inconsistent shares; the round then fails naming the owner.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from qflare.crypto import (
    MaskPrg,
    RingVector,
    SecretBytes,
    Shamir,
    ShamirError,
    X25519KeyPair,
)
from qflare.crypto.shamir import SHARE_BYTES
from qflare.protocol import messages as m
from qflare.protocol.secagg import keys
from qflare.protocol.shares import opened_share


class ReconstructionError(ShamirError):
    """A secret of ``owner`` could not be rebuilt from good shares.

    Args:
        owner: The client whose secret failed.
        why: What went wrong.
    """

    def __init__(self, owner: int, why: str) -> None:
        super().__init__(f"client {owner}: {why}")
        self.owner = owner


@dataclass(frozen=True, slots=True)
class UnmaskInputs:
    """Everything the unmask step needs from the server's collected state."""

    cfg: m.RoundConfig
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    responses: Mapping[int, m.UnmaskShares]
    adverts: Mapping[int, m.AdvertiseKeys]
    partners: Mapping[int, frozenset[int]]
    self_commits: Mapping[int, bytes]


def _share_ok(
    cfg: m.RoundConfig,
    owner: int,
    holder: int,
    kind: str,
    released: bytes,
    commitments: Mapping[int, Mapping[int, bytes]],
) -> bool:
    both = commitments.get(owner, {}).get(holder, b"")
    half = both[: keys.COMMITMENT_BYTES] if kind == "b" else both[keys.COMMITMENT_BYTES :]
    return opened_share(keys.seed_scope(cfg), owner, holder, kind, released, half) is not None


def check_released(
    cfg: m.RoundConfig,
    msg: m.UnmaskShares,
    commitments: Mapping[int, Mapping[int, bytes]],
) -> tuple[m.UnmaskShares, set[int]]:
    """Split a holder's R4 shares into those matching their owners' commitments and the rest.

    Returns:
        The message with only good shares, and the owners whose share was bad.
    """
    holder, bad = msg.sender, set()
    good_b = {}
    for owner, share in msg.self_mask_shares.items():
        if _share_ok(cfg, owner, holder, "b", share, commitments):
            good_b[owner] = share
        else:
            bad.add(owner)
    good_sk = {}
    for owner, share in msg.key_shares.items():
        if _share_ok(cfg, owner, holder, "sk", share, commitments):
            good_sk[owner] = share
        else:
            bad.add(owner)
    return msgspec.structs.replace(msg, self_mask_shares=good_b, key_shares=good_sk), bad


def _collect(inputs: UnmaskInputs, owner: int, *, self_mask: bool) -> dict[int, bytes]:
    shares: dict[int, bytes] = {}
    for holder, resp in inputs.responses.items():
        table = resp.self_mask_shares if self_mask else resp.key_shares
        share = table.get(owner)
        if share is not None:
            shares[keys.holder_x(holder)] = share[:SHARE_BYTES]
    return shares


def _combine(shamir: Shamir, shares: dict[int, bytes], owner: int) -> SecretBytes:
    try:
        return shamir.combine(shares)
    except ShamirError as exc:
        raise ReconstructionError(owner, str(exc)) from None


def _self_mask_secret(inputs: UnmaskInputs, shamir: Shamir, owner: int) -> SecretBytes:
    b = _combine(shamir, _collect(inputs, owner, self_mask=True), owner)
    expected = inputs.self_commits.get(owner, b"")
    if not hmac.compare_digest(keys.self_mask_commitment(inputs.cfg, owner, b), expected):
        raise ReconstructionError(owner, "self-mask secret does not match its commitment")
    return b


def _mask_key(inputs: UnmaskInputs, shamir: Shamir, owner: int) -> SecretBytes:
    sk = _combine(shamir, _collect(inputs, owner, self_mask=False), owner)
    if X25519KeyPair(sk).public != inputs.adverts[owner].mask_pk:
        raise ReconstructionError(owner, "reconstructed key does not match its advertised key")
    return sk


def remove_masks(acc: RingVector, inputs: UnmaskInputs) -> None:
    """Subtract survivors' self masks and dropped clients' pairwise masks from ``acc`` in place.

    Raises:
        ReconstructionError: a secret has fewer than ``t`` good shares or reconstructs to a value
            its owner did not commit to (naming the owner).
    """
    cfg = inputs.cfg
    shamir = Shamir(cfg.t)
    prg = MaskPrg(cfg.dim, cfg.modulus_bits)
    alive = set(inputs.survivors)
    secrets = [(u, _self_mask_secret(inputs, shamir, u)) for u in inputs.survivors]
    needed = [d for d in inputs.dropped if any(d in inputs.partners.get(v, ()) for v in alive)]
    keys_of = [(d, _mask_key(inputs, shamir, d)) for d in needed]
    for _, b in secrets:  # every secret is rebuilt and checked before the sum is touched
        prg.sub_into(acc, keys.self_mask_seed(cfg, b))
    for d, sk in keys_of:
        for v in sorted(alive):
            if d not in inputs.partners.get(v, frozenset()):
                continue
            seed = keys.pair_seed(cfg, sk, inputs.adverts[v].mask_pk, v, d)
            prg.apply(acc, seed, -keys.pair_sign(v, d))
