"""Round-named states shared by the SecAgg client and server machines."""

from __future__ import annotations

import enum


class State(enum.Enum):
    """Where a machine stands. A client in ``Rk`` is waiting for the server's round-k message."""

    R0_ADVERTISE_KEYS = "R0_ADVERTISE_KEYS"
    R0_REVEAL_SEED = "R0_REVEAL_SEED"  # sparse graphs only: the graph seed's commit-reveal
    R1_SHARE_KEYS = "R1_SHARE_KEYS"
    R2_MASKED_INPUT = "R2_MASKED_INPUT"
    R3_CONSISTENCY = "R3_CONSISTENCY"
    R4_UNMASK = "R4_UNMASK"
    COMPLETED = "COMPLETED"
    ABORTED = "ABORTED"


ROUNDS: tuple[State, ...] = (
    State.R0_ADVERTISE_KEYS,
    State.R0_REVEAL_SEED,
    State.R1_SHARE_KEYS,
    State.R2_MASKED_INPUT,
    State.R3_CONSISTENCY,
    State.R4_UNMASK,
)
