"""Shared builders for protocol tests."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from qflare.crypto import DeterministicRng, RingVector, SignatureScheme, Signer, make_signer
from qflare.protocol.messages import RoundConfig


def config(
    n: int,
    k: int,
    t: int,
    *,
    dim: int = 16,
    round_id: int = 1,
    scheme: str = "ed25519",
    bits: int = 32,
) -> RoundConfig:
    return RoundConfig(
        session="test",
        round_id=round_id,
        participants=tuple(range(n)),
        k=k,
        t=t,
        dim=dim,
        signature_scheme=scheme,
        modulus_bits=bits,
    )


@lru_cache(maxsize=8)
def _signers(n: int, scheme: str) -> tuple[Signer, ...]:
    rng = DeterministicRng(n)
    return tuple(make_signer(SignatureScheme(scheme), rng) for _ in range(n))


def signers(n: int, scheme: str = "ed25519") -> dict[int, Signer]:
    return dict(enumerate(_signers(n, scheme)))


def inputs(dim: int, bits: int = 32):
    dtype = np.uint32 if bits == 32 else np.uint64

    def make(u: int) -> RingVector:
        return (
            np.random.default_rng(1000 + u)
            .integers(0, 2**bits - 1, dim, dtype=np.uint64, endpoint=True)
            .astype(dtype)
        )

    return make


@lru_cache(maxsize=8)
def _authority(n: int, scheme: str):
    from qflare.sim.identities import SimAuthority

    authority = SimAuthority(DeterministicRng(b"authority"))
    return authority, authority.certify_all(signers(n, scheme))


def authority(n: int, scheme: str = "ed25519"):
    """A simulated enrollment authority that certified ``signers(n, scheme)``."""
    return _authority(n, scheme)[0]


def certificates(n: int, scheme: str = "ed25519") -> dict[int, bytes]:
    """The genuine certificates of ``signers(n, scheme)``."""
    return dict(_authority(n, scheme)[1])


def directory(n: int, scheme: str = "ed25519"):
    """An identity directory over the genuine certificates of ``signers(n, scheme)``."""
    return authority(n, scheme).directory(certificates(n, scheme), SignatureScheme(scheme))
