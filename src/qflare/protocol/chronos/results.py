"""What a CHRONOS round produced, and the server's bookkeeping while it runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from qflare.crypto import RingVector
from qflare.protocol.chronos import messages as m
from qflare.protocol.errors import AbortReason


@dataclass
class RoundResult:
    """What one round produced.

    Attributes:
        round_id: The round.
        total: The exact modular sum of the survivors' inputs, or ``None`` if the round failed.
        survivors: Clients whose inputs are in ``total``.
        dropped: Roster members whose inputs are not (silent, failed or excluded).
        recovered: Clients whose keys were released this round (excluded from now on).
        unmask_step: Whether the round needed the second online message.
        abort_reason: Why the round failed, if it did.
    """

    round_id: int
    total: RingVector | None = None
    survivors: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()
    recovered: tuple[int, ...] = ()
    unmask_step: bool = False
    abort_reason: AbortReason | None = None


@dataclass
class RunningRound:
    """The server's state of the round in progress: the running sum and who is in it."""

    round_id: int
    acc: RingVector
    survivors: frozenset[int] = frozenset()
    listed: tuple[int, ...] = ()
    responses: dict[int, m.UnmaskShares] = field(default_factory=dict)
