"""What a CHRONOS keystore persists (sealed in an enclave): its phase, policy and secrets."""

from __future__ import annotations

import enum
from typing import Protocol

import msgspec

from qflare.protocol.chronos import messages as m
from qflare.protocol.chronos.invariants import LedgerState
from qflare.protocol.numbers import Finite
from qflare.protocol.policy import ClientPolicy
from qflare.protocol.seed import SeedState

__all__ = ["CoreState", "Phase", "PolicyState", "RoundCounter"]

_STATE_VERSION = 1


class RoundCounter(Protocol):
    """A monotonic round counter (an RPMB counter in the enclave, an integer in software)."""

    def read(self) -> int:
        """Current value (0 before the first round)."""
        ...

    def advance(self, to_value: int) -> int:
        """Move to ``to_value`` (persisted before returning); refuse values not above it."""
        ...


class Phase(enum.StrEnum):
    """How far the keystore is through the epoch's offline phase."""

    NO_EPOCH = "no-epoch"
    ADVERTISED = "advertised"
    SHARED = "shared"
    READY = "ready"


class PolicyState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A :class:`~qflare.protocol.policy.ClientPolicy`, as sealed with the keystore."""

    corrupt_fraction: Finite = 0.05
    security_bits: int = 40
    min_cohort: int = 3
    max_seed_restarts: int = 2

    @classmethod
    def of(cls, policy: ClientPolicy) -> PolicyState:
        """The sealable form of ``policy``."""
        return cls(
            corrupt_fraction=policy.corrupt_fraction,
            security_bits=policy.security_bits,
            min_cohort=policy.min_cohort,
            max_seed_restarts=policy.max_seed_restarts,
        )

    def policy(self) -> ClientPolicy:
        """Back to a :class:`ClientPolicy` (validated again)."""
        return ClientPolicy(
            corrupt_fraction=self.corrupt_fraction,
            security_bits=self.security_bits,
            min_cohort=self.min_cohort,
            max_seed_restarts=self.max_seed_restarts,
        )


class CoreState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything a keystore must persist (secret: only ever sealed, never sent in the clear)."""

    version: int = _STATE_VERSION
    phase: Phase
    authority: bytes = b""
    policy: PolicyState = msgspec.field(default_factory=PolicyState)
    identities: dict[int, bytes] = {}
    rejected: dict[int, str] = {}
    config: m.EpochConfig | None = None
    seed: SeedState | None = None
    graph_seed: bytes = b""
    enc_private: bytes = b""
    mask_private: tuple[bytes, ...] = ()
    self_secrets: tuple[bytes, ...] = ()
    recv_keys: dict[int, bytes] = {}
    pair_keys: dict[int, tuple[bytes, ...]] = {}
    held: dict[int, m.SharePayload] = {}
    partners: tuple[int, ...] = ()
    ledger: LedgerState = msgspec.field(default_factory=LedgerState)
