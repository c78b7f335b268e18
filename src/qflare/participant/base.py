"""What every protocol participant shares: the interface, result signing, the run tally.

A participant answers the tasks of one protocol. Its driver (the node's loop, a simulated
device) hands it each task whose body it :meth:`~Participant.handles`, delivers the signed
answer, and tells it how delivery went. Protocol errors never escape :meth:`Participant.handle`:
the participant leaves the round (or epoch), counts the drop and answers nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from qflare.crypto import Signer
from qflare.protocol.wire import (
    UPDATE_CONTEXT,
    Notice,
    SignedResult,
    Task,
    TaskBody,
    result_transcript,
)

__all__ = [
    "FloatVector",
    "Participant",
    "ParticipantFactory",
    "ResultSigner",
    "RunReport",
    "Trainer",
]

log = logging.getLogger("qflare.node")
FloatVector = npt.NDArray[np.float32]


class Trainer(Protocol):
    """Trains locally from the global model of a round."""

    def train(self, weights: FloatVector, round_id: int) -> tuple[FloatVector, int]:
        """Return ``(new - given weights, number of training examples)`` as float32."""
        ...


@dataclass
class RunReport:
    """What a device did, round by round.

    Attributes:
        completed: Rounds in which this device sent its last protocol message.
        dropped: Rounds this device abandoned (protocol error, failed training, superseded) or
            declined.
        results_sent: Signed results delivered (including re-sends).
    """

    completed: int = 0
    dropped: int = 0
    results_sent: int = 0

    @property
    def rounds(self) -> int:
        """Rounds finished either way."""
        return self.completed + self.dropped

    def drop(self, round_id: int, step: int, why: str) -> None:
        """Count a round this device left, and log why."""
        self.dropped += 1
        log.warning("round dropped", extra={"round": round_id, "step": step, "why": why})

    def complete(self, round_id: int) -> None:
        """Count a round this device finished."""
        self.completed += 1
        log.info("round completed", extra={"round": round_id})


class ResultSigner:
    """Signs a device's answers (protocol messages and notices) with its identity key.

    Args:
        device_id: The device id every result names.
        signer: The device identity key.
    """

    def __init__(self, device_id: str, signer: Signer) -> None:
        self.device_id, self.signer = device_id, signer

    def sign(self, round_id: int, step: int, message: bytes) -> SignedResult:
        """A result over (device, round, step, hash of ``message``)."""
        transcript = result_transcript(self.device_id, round_id, step, message)
        return SignedResult(
            device_id=self.device_id,
            round_id=round_id,
            step=step,
            message=message,
            signature=self.signer.sign(transcript, context=UPDATE_CONTEXT),
        )

    def notice(self, round_id: int, step: int, notice: Notice) -> SignedResult:
        """A signed :class:`~qflare.protocol.wire.Notice` in place of a protocol message."""
        return self.sign(round_id, step, msgspec.msgpack.encode(notice))


class Participant(Protocol):
    """A device's part in the rounds of one protocol."""

    def handles(self, body: TaskBody) -> bool:
        """Whether tasks with this body are this participant's."""
        ...

    def handle(self, task: Task) -> SignedResult | None:
        """The signed answer to ``task``; ``None`` if this device does not answer it.

        The same task served again gets the same answer. A protocol error leaves the round
        (counted as a drop) and answers ``None``; it never raises.
        """
        ...

    def delivered(self, result: SignedResult) -> bool:
        """Note that the server accepted ``result``; ``True`` if it completed a round."""
        ...

    def rejected(self, result: SignedResult, why: str) -> None:
        """The server rejected ``result``: leave its round (counted as a drop)."""
        ...

    def position(self) -> tuple[int, int] | None:
        """``(round, step)`` this participant is in, if any (named by a farewell)."""
        ...

    def abandon(self, why: str | None) -> None:
        """Leave whatever is in progress; ``None``: the device stops (release resources)."""
        ...


ParticipantFactory = Callable[[ResultSigner, RunReport], Participant]
"""Builds a protocol's participant from the device's result signer and its run report."""
