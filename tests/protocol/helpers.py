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
        graph_seed=b"graph-seed-0001!",
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
