"""Final unmasking: reconstruct secrets, check them, strip the masks from the sum.

Every rebuilt secret is checked: a self-mask secret against its owner's R1 commitment, a mask
key against the owner's advertised public key. When the check fails, the released shares are
checked one by one against the commitments the owner signed in R1, so a wrong or malformed share
is dropped and its sender named, and the secret is rebuilt from the good ones; if even those give
a secret the owner did not commit to, the owner dealt inconsistent shares and the round fails
naming it. A COMPLETED round never carries a wrong sum.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from qflare.crypto import MaskPrg, RingVector, SecretBytes, X25519KeyPair
from qflare.protocol import messages as m
from qflare.protocol.secagg import keys
from qflare.protocol.shares import ReconstructionError, SharedSecret, rebuild_secret

__all__ = ["ReconstructionError", "UnmaskInputs", "remove_masks"]


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
    commitments: Mapping[int, Mapping[int, bytes]]


def _secret(inputs: UnmaskInputs, owner: int, kind: str) -> SharedSecret:
    self_mask = kind == "b"
    released: dict[int, bytes] = {}
    for holder, resp in inputs.responses.items():
        share = (resp.self_mask_shares if self_mask else resp.key_shares).get(owner)
        if share is not None:
            released[holder] = share
    both = inputs.commitments.get(owner, {})

    def commitment_of(holder: int) -> bytes:
        c = both.get(holder, b"")
        return c[: keys.COMMITMENT_BYTES] if self_mask else c[keys.COMMITMENT_BYTES :]

    cfg = inputs.cfg
    want = inputs.self_commits.get(owner, b"")

    def check(secret: SecretBytes) -> bool:
        if self_mask:
            return hmac.compare_digest(keys.self_mask_commitment(cfg, owner, secret), want)
        return X25519KeyPair(secret).public == inputs.adverts[owner].mask_pk

    return SharedSecret(
        keys.seed_scope(cfg), owner, kind, released, keys.holder_x, commitment_of, check
    )


def remove_masks(acc: RingVector, inputs: UnmaskInputs) -> dict[int, str]:
    """Subtract survivors' self masks and dropped clients' pairwise masks from ``acc`` in place.

    Every needed secret is rebuilt and checked before the sum is touched.

    Returns:
        Holders that released shares not matching their owners' commitments (culprits).

    Raises:
        ReconstructionError: a secret has fewer than ``t`` good shares or reconstructs to a value
            its owner did not commit to (naming the owner).
    """
    cfg, culprits, t = inputs.cfg, dict[int, str](), inputs.cfg.t
    alive = set(inputs.survivors)
    secrets = [
        (u, rebuild_secret(_secret(inputs, u, "b"), t, culprits, "R4")) for u in inputs.survivors
    ]
    needed = [d for d in inputs.dropped if any(d in inputs.partners.get(v, ()) for v in alive)]
    keys_of = [(d, rebuild_secret(_secret(inputs, d, "sk"), t, culprits, "R4")) for d in needed]
    prg = MaskPrg(cfg.dim, cfg.modulus_bits)
    for _, b in secrets:
        prg.sub_into(acc, keys.self_mask_seed(cfg, b))
    for d, sk in keys_of:
        for v in sorted(alive):
            if d not in inputs.partners.get(v, frozenset()):
                continue
            seed = keys.pair_seed(cfg, sk, inputs.adverts[v].mask_pk, v, d)
            prg.apply(acc, seed, -keys.pair_sign(v, d))
    return culprits
