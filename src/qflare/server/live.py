"""An open round in server memory: the protocol machine, its devices, the current step's tasks."""

from __future__ import annotations

from dataclasses import dataclass, field

from qflare.protocol import messages as m
from qflare.protocol.secagg import SecAggServer, State
from qflare.protocol.wire import SecAggStart, SecAggStep, Task


@dataclass
class LiveRound:
    """What the coordinator keeps for the round in progress.

    Attributes:
        round_id: Round number.
        cfg: Public round parameters.
        machine: The sans-IO SecAgg server.
        devices: Client index -> device id.
        identities: Client index -> identity public key.
        start: Client index -> its round-start task body.
        step: Protocol step (0 = advertise keys; +1 per advance).
        deadline: When silent clients of this step become dropouts.
        outbox: Client index -> encoded server message for the current step.
        seq: Next event-log sequence number.
        index_of: Device id -> client index.
        step_timeout_s: The step timeout announced in tasks (nodes cap their backoff by it).
        masked: Clients whose masked input is in the running sum (a re-sent copy is ignored).
        abort: Why the machine aborted, when it did and the round is not closed yet.
    """

    round_id: int
    cfg: m.RoundConfig
    machine: SecAggServer
    devices: dict[int, str]
    identities: dict[int, bytes]
    start: dict[int, SecAggStart]
    step: int = 0
    deadline: float = 0.0
    outbox: dict[int, bytes] = field(default_factory=dict)
    seq: int = 0
    index_of: dict[str, int] = field(default_factory=dict)
    step_timeout_s: float = 0.0
    masked: set[int] = field(default_factory=set)
    abort: str | None = None

    def __post_init__(self) -> None:
        self.index_of = {d: i for i, d in self.devices.items()}

    def task_for(self, index: int) -> Task | None:
        """The task ``index`` should work on now, if the machine still waits for it."""
        if (
            self.machine.state in (State.COMPLETED, State.ABORTED)
            or index not in self.machine.pending()
        ):
            return None
        timeout = self.step_timeout_s
        if self.step == 0:
            return Task(
                round_id=self.round_id, step=0, body=self.start[index], step_timeout_s=timeout
            )
        message = self.outbox.get(index)
        if message is None:
            return None
        return Task(
            round_id=self.round_id,
            step=self.step,
            body=SecAggStep(message=message),
            step_timeout_s=timeout,
        )

    @property
    def terminal(self) -> bool:
        """Whether the machine has completed or failed (the round still needs closing)."""
        return self.abort is not None or self.machine.state in (State.COMPLETED, State.ABORTED)

    def next_seq(self) -> int:
        """Reserve the next event-log sequence number."""
        self.seq += 1
        return self.seq - 1
