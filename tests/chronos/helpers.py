"""Shared builders for CHRONOS tests."""

from __future__ import annotations

import numpy as np

from qflare.crypto import RingVector
from qflare.protocol.chronos import EpochConfig, Mode, SoftwareKeystore
from qflare.sim.chronos_cohort import ChronosCohort, software_keystores
from qflare.sim.cohort import expected_sum
from tests.protocol.helpers import inputs, signers

__all__ = ["config", "cohort", "directory", "exact", "inputs", "keystores"]


def config(
    n: int,
    k: int,
    t: int,
    *,
    mode: Mode = Mode.CHRONOS,
    dim: int = 16,
    rounds: int = 3,
    first_round: int = 1,
    epoch: int = 1,
    bits: int = 32,
) -> EpochConfig:
    return EpochConfig(
        session="test",
        epoch=epoch,
        mode=mode,
        participants=tuple(range(n)),
        k=k,
        t=t,
        dim=dim,
        modulus_bits=bits,
        signature_scheme="ed25519",
        first_round=first_round,
        rounds=rounds,
    )


def keystores(cfg: EpochConfig, seed: int = 0) -> dict[int, SoftwareKeystore]:
    return software_keystores(cfg, seed=seed, signers=signers(len(cfg.participants)))


def directory(stores) -> dict:
    """The genuine identity directory of ``stores`` (certified by the default sim authority)."""
    from qflare.crypto import SignatureScheme
    from qflare.sim.identities import SimAuthority

    keys = {u: ks.identity_public_key for u, ks in stores.items()}
    return SimAuthority.default().endorsed(keys, SignatureScheme.ED25519)


def cohort(cfg: EpochConfig, seed: int = 0, **kwargs) -> ChronosCohort:
    return ChronosCohort(cfg, keystores(cfg, seed), **kwargs)


def exact(total: RingVector | None, survivors, cfg: EpochConfig) -> bool:
    want = expected_sum(inputs(cfg.dim, cfg.modulus_bits), survivors, cfg.dim, cfg.modulus_bits)
    return total is not None and bool(np.array_equal(total, want))
