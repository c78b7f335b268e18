"""An open round in server memory: the protocol machine, its devices, the current step's tasks."""

from __future__ import annotations

from dataclasses import dataclass, field

from qflare.protocol import messages as m
from qflare.protocol.secagg import SecAggServer, State
from qflare.protocol.wire import RoundStart, Task


@dataclass
class LiveRound:
    """What the coordinator keeps for the round in progress.

    Attributes:
        round_id: Round number.
        cfg: Public round parameters.
        machine: The sans-IO SecAgg server.
        devices: Client index -> device id.
        identities: Client index -> identity public key.
        start: Client index -> its RoundStart task payload.
        step: Protocol step (0 = advertise keys; +1 per advance).
        deadline: When silent clients of this step become dropouts.
        outbox: Client index -> encoded server message for the current step.
        seq: Next event-log sequence number.
        index_of: Device id -> client index.
    """

    round_id: int
    cfg: m.RoundConfig
    machine: SecAggServer
    devices: dict[int, str]
    identities: dict[int, bytes]
    start: dict[int, RoundStart]
    step: int = 0
    deadline: float = 0.0
    outbox: dict[int, bytes] = field(default_factory=dict)
    seq: int = 0
    index_of: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index_of = {d: i for i, d in self.devices.items()}

    def task_for(self, index: int) -> Task | None:
        """The task ``index`` should work on now, if the machine still waits for it."""
        if (
            self.machine.state in (State.COMPLETED, State.ABORTED)
            or index not in self.machine.pending()
        ):
            return None
        if self.step == 0:
            return Task(round_id=self.round_id, step=0, start=self.start[index])
        message = self.outbox.get(index)
        return (
            None
            if message is None
            else Task(round_id=self.round_id, step=self.step, message=message)
        )

    def next_seq(self) -> int:
        """Reserve the next event-log sequence number."""
        self.seq += 1
        return self.seq - 1
