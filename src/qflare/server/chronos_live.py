"""A CHRONOS epoch in server memory: its devices, the epoch machine, the current step's tasks."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from qflare.protocol.chronos import ChronosServer, RoundResult, State
from qflare.protocol.errors import AbortReason, RemoteProtocolError
from qflare.protocol.identity import EndorsedKey
from qflare.protocol.wire import ChronosTask, SignedResult, Task
from qflare.store.models import Round

_COLLECTING = frozenset(
    {
        State.O0_ADVERTISE_KEYS,
        State.O0_REVEAL_SEED,
        State.O1_SHARE_KEYS,
        State.O2_CONFIRM,
        State.ON_MASKED_INPUT,
        State.ON_UNMASK,
    }
)


@dataclass
class ChronosEpoch:
    """What the CHRONOS coordinator keeps for the epoch in progress.

    Attributes:
        epoch: Epoch number (= its first round id).
        rounds: Rounds planned for the epoch.
        devices: Client index -> device id (the devices asked to join).
        round_id: The round row in progress (the first round's row while offline).
        deadline: When silent clients of this step become dropouts.
        step: Epoch-wide step counter (0 = join, 1 = offline O0, ...).
        joined: Client index -> the identity key its keystore signs with.
        entries: Client index -> its certificate and keystore-key endorsement (for the setup).
        nonces: Client index -> the attestation challenge of its join task.
        refused: Clients refused at the join step (or that declined it).
        machine: The sans-IO epoch server (made once the join step closes).
        outbox: Client index -> its task payload for the current step.
        in_round: Whether a round is running (between ``open_round`` and its result).
        next_round: The next round id to open.
        seq: Next event-log sequence number of ``round_id``'s row.
        index_of: Device id -> client index.
        step_timeout_s: The step timeout announced in tasks (nodes cap their backoff by it).
    """

    epoch: int
    rounds: int
    devices: dict[int, str]
    round_id: int
    deadline: float
    step: int = 0
    joined: dict[int, bytes] = field(default_factory=dict)
    entries: dict[int, EndorsedKey] = field(default_factory=dict)
    nonces: dict[int, bytes] = field(default_factory=dict)
    refused: set[int] = field(default_factory=set)
    machine: ChronosServer | None = None
    outbox: dict[int, ChronosTask] = field(default_factory=dict)
    in_round: bool = False
    next_round: int = 0
    seq: int = 0
    index_of: dict[str, int] = field(default_factory=dict)
    step_timeout_s: float = 0.0

    def __post_init__(self) -> None:
        self.index_of = {d: i for i, d in self.devices.items()}
        self.next_round = self.next_round or self.epoch

    def collecting(self) -> bool:
        """Whether the current step waits for client messages."""
        return self.machine is None or self.machine.state in _COLLECTING

    def pending(self) -> frozenset[int]:
        """Clients the current step still waits for."""
        if self.machine is None:
            return frozenset(self.devices) - frozenset(self.joined) - frozenset(self.refused)
        return self.machine.pending() if self.collecting() else frozenset()

    def ready(self) -> bool:
        """Whether every live client of the current step answered."""
        return self.machine.ready() if self.machine is not None else not self.pending()

    def task_for(self, index: int) -> Task | None:
        """The task ``index`` should work on now, if the current step still waits for it."""
        payload = self.outbox.get(index)
        if payload is None or index not in self.pending():
            return None
        return Task(
            round_id=self.round_id,
            step=self.step,
            body=payload,
            step_timeout_s=self.step_timeout_s,
        )

    def state_name(self) -> str:
        """The epoch machine's state (``JOIN`` before it exists), for errors and logs."""
        return self.machine.state.value if self.machine is not None else "JOIN"

    def next_seq(self) -> int:
        """Reserve the next event-log sequence number."""
        self.seq += 1
        return self.seq - 1


def put_round_row(
    db: Session,
    round_id: int,
    *,
    state: str,
    config: bytes,
    devices: str,
    version: int,
    now: float,
    deadline: float,
) -> bool:
    """Create round ``round_id``'s row, or reopen the epoch's first row; ``True`` if created."""
    row = db.get(Round, round_id)
    created = row is None
    if row is None:
        row = Round(id=round_id, config=config, devices=devices, opened_at=now)
        db.add(row)
    row.state, row.config, row.devices = state, config, devices
    row.model_version, row.deadline_at = version, deadline
    return created


def abort_row(db: Session, round_id: int, now: float, reason: str) -> bool:
    """Close round ``round_id``'s row as ``ABORTED`` if it is still open; ``True`` if it was."""
    row = db.get(Round, round_id)
    if row is None or row.closed_at is not None:
        return False
    row.state, row.closed_at, row.abort_reason = "ABORTED", now, reason
    return True


def result_of(results: list[RoundResult], round_id: int) -> RoundResult | None:
    """The machine's result for ``round_id``, if it has one."""
    return next((r for r in reversed(results) if r.round_id == round_id), None)


def step_index(live: ChronosEpoch | None, device_id: str, result: SignedResult) -> int:
    """The client index of a result that names the current epoch, round and step.

    Raises:
        RemoteProtocolError: wrong epoch, round or step (409).
    """
    if live is None or device_id not in live.index_of or result.device_id != device_id:
        raise RemoteProtocolError("no such epoch for this device", state="NONE", http_status=409)
    if result.round_id != live.round_id or result.step != live.step:
        raise RemoteProtocolError(
            f"step {result.step} is not the current step {live.step}",
            state=live.state_name(),
            http_status=409,
        )
    return live.index_of[device_id]


def malformed(state: str, index: int, exc: Exception) -> RemoteProtocolError:
    """The error for an undecodable client message."""
    return RemoteProtocolError(
        f"malformed protocol message: {exc}",
        state=state,
        client=index,
        reason=AbortReason.MALFORMED_MESSAGE,
    )
