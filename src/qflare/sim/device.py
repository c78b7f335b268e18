"""A simulated edge device for in-process drivers (tests, benchmarks): protocol logic only.

It answers the server's tasks with the same participant as ``qflare node``
(:class:`~qflare.participant.secagg.SecAggParticipant`: train -- here a given update function
--, quantise, run the client machine, sign the result), without any transport: an answer counts
as delivered as soon as it is returned.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from qflare.crypto import Rng, Signer
from qflare.participant.base import FloatVector, ResultSigner, RunReport
from qflare.participant.secagg import SecAggParticipant
from qflare.protocol.identity import AuthorityKey, CertificateCache
from qflare.protocol.secagg import RoundRegistry
from qflare.protocol.wire import SignedResult, Task

__all__ = ["SimDevice", "UnansweredError", "UpdateFn"]

UpdateFn = Callable[[npt.NDArray[np.float32], int], tuple[npt.NDArray[np.float32], int]]
"""(global weights, round id) -> (delta, weight)."""


class UnansweredError(Exception):
    """The device answered nothing: it left the round (the reason is in its log and report)."""


@dataclass(frozen=True)
class _UpdateTrainer:
    """An :data:`UpdateFn` as a :class:`~qflare.participant.base.Trainer`."""

    update: UpdateFn

    def train(self, weights: FloatVector, round_id: int) -> tuple[FloatVector, int]:
        return self.update(weights, round_id)


class SimDevice:
    """One device's protocol side.

    Args:
        device_id: Id from enrollment.
        signer: Identity key.
        update: Local training stand-in.
        rng: Randomness for keys, masks and rounding.
        authority: The enrollment authority key the device pinned.
        cache: Verified certificates (shared by the simulated devices of a process).
        clock: Wall-clock time (training deadline warnings).
    """

    def __init__(
        self,
        device_id: str,
        signer: Signer,
        update: UpdateFn,
        rng: Rng,
        authority: AuthorityKey,
        cache: CertificateCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.device_id, self.signer = device_id, signer
        self.registry = RoundRegistry()
        self.report = RunReport()
        self.participant = SecAggParticipant(
            ResultSigner(device_id, signer),
            _UpdateTrainer(update),
            rng,
            authority,
            self.registry,
            self.report,
            clock=clock,
            cache=cache or CertificateCache(),
        )

    def handle(self, task: Task) -> SignedResult:
        """Answer one task with a signed result (a declined round: a signed notice).

        Raises:
            UnansweredError: the device dropped the round or ignored the task (stale, foreign).
        """
        result = self.participant.handle(task)
        if result is None:
            raise UnansweredError(f"no answer to round {task.round_id} step {task.step}")
        self.participant.delivered(result)
        return result
