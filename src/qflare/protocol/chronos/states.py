"""Phase-named states shared by the CHRONOS client and server machines.

``O*`` states belong to the offline phase (once per epoch, while devices are idle), ``ON_*``
states to the online phase (every round). A client in a state is waiting for the server message
that opens it; the server in a state is collecting the client messages that close it.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    """Where a CHRONOS machine stands."""

    O0_ADVERTISE_KEYS = "O0_ADVERTISE_KEYS"
    O0_REVEAL_SEED = "O0_REVEAL_SEED"  # sparse graphs only: the graph seed's commit-reveal
    O1_SHARE_KEYS = "O1_SHARE_KEYS"
    O2_CONFIRM = "O2_CONFIRM"
    ON_IDLE = "ON_IDLE"
    ON_MASKED_INPUT = "ON_MASKED_INPUT"
    ON_UNMASK = "ON_UNMASK"
    EPOCH_OVER = "EPOCH_OVER"
    ABORTED = "ABORTED"


OFFLINE: tuple[State, ...] = (
    State.O0_ADVERTISE_KEYS,
    State.O0_REVEAL_SEED,
    State.O1_SHARE_KEYS,
    State.O2_CONFIRM,
)
"""The offline phase's collecting states, in order."""

ONLINE: tuple[State, ...] = (State.ON_MASKED_INPUT, State.ON_UNMASK)
"""The online phase's collecting states, in order (``ON_UNMASK`` only when needed)."""
