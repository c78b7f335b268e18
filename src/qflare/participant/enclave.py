"""A device's part in enclave-aggregation rounds (``protocol = "enclave"``).

A round is one task (:class:`~qflare.protocol.wire.EnclaveTask`, step 0) and one answer:

* check the round's attestation evidence first -- the enclave key must be bound by evidence
  from the measurement this device pinned, answering the round's nonce -- and answer a failure
  with a signed ``declined`` :class:`~qflare.protocol.wire.Notice` (nothing is trained or sent);
* train from the given weights, clip each coordinate to ``[-clip, clip]``, seal the delta (weight
  = number of examples) to the attested key and answer with the encoded sealed upload;
* the same task served again (our answer was lost): the same signed answer again. An update is
  sealed at most once per round (the sealer refuses a second one).

The attestation check and the sealing are injected (:class:`EnclaveSealer`, implemented by
:class:`qflare.node.enclave_upload.EnclaveUploader`): this layer only drives them.

Logs carry structured ``extra`` fields (round, reason...) and never keys or update vectors.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from qflare.participant.base import FloatVector, ResultSigner, RunReport, Trainer
from qflare.protocol.enclave import round_nonce
from qflare.protocol.wire import (
    EnclaveTask,
    Notice,
    SignedResult,
    Task,
    TaskBody,
    decode_notice,
)
from qflare.tee import AttestationError

__all__ = ["EnclaveParticipant", "EnclaveSealer"]

log = logging.getLogger("qflare.node")


class EnclaveSealer(Protocol):
    """Attests a round's enclave key, then seals this device's update to it."""

    @property
    def session(self) -> str:
        """The federation session uploads are bound to."""
        ...

    def trust_round(self, evidence: bytes, *, public_key: bytes, round_id: int) -> object:
        """Verify ``evidence`` for ``public_key`` in ``round_id``; raises ``AttestationError``."""
        ...

    def seal(
        self, round_id: int, vector: npt.NDArray[np.floating], *, weight: float = 1.0
    ) -> bytes:
        """The encoded sealed upload (raises ``RuntimeError`` for a second one in a round)."""
        ...


@dataclass
class _Answer:
    round_id: int
    result: SignedResult


class EnclaveParticipant:
    """Answers enclave-aggregation tasks for one device.

    Args:
        results: Signs every answer with the device identity key.
        trainer: Local training.
        sealer: Attestation check and sealing (the pinned measurement lives there).
        report: Where rounds completed and dropped are counted.
        clock: Wall-clock time (deadline warnings).
    """

    def __init__(
        self,
        results: ResultSigner,
        trainer: Trainer,
        sealer: EnclaveSealer,
        report: RunReport,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._results, self._trainer, self._sealer = results, trainer, sealer
        self._report, self._clock = report, clock
        self._answer: _Answer | None = None

    def handles(self, body: TaskBody) -> bool:
        """Enclave-aggregation tasks."""
        return isinstance(body, EnclaveTask)

    def handle(self, task: Task) -> SignedResult | None:
        """The signed upload (or decline) for ``task``; ``None`` if this device does not answer."""
        body = task.body
        current = self._answer
        if current is not None and current.round_id == task.round_id:
            log.info("re-sending answer", extra={"round": task.round_id, "step": task.step})
            return current.result
        if task.step != 0 or not isinstance(body, EnclaveTask):
            log.warning("malformed task ignored", extra={"round": task.round_id})
            return None
        expected = round_nonce(self._sealer.session, task.round_id)
        if body.session != self._sealer.session or not hmac.compare_digest(body.nonce, expected):
            return self._decline(task.round_id, "attestation-stale", "not this round's challenge")
        try:
            self._sealer.trust_round(
                body.evidence, public_key=body.enclave_key, round_id=task.round_id
            )
        except AttestationError as exc:
            return self._decline(task.round_id, f"attestation-{exc.reason.value}", exc.detail)
        try:
            vector, examples = self._local_update(task.round_id, body)
            sealed = self._sealer.seal(task.round_id, vector, weight=float(examples))
        except (ValueError, RuntimeError) as exc:  # RuntimeError: torch, or sealed twice
            self._report.drop(task.round_id, 0, f"cannot upload: {exc}")
            return None
        result = self._results.sign(task.round_id, 0, sealed)
        self._answer = _Answer(task.round_id, result)
        log.info("answer ready", extra={"round": task.round_id, "step": 0, "kind": "upload"})
        return result

    def _local_update(self, round_id: int, body: EnclaveTask) -> tuple[FloatVector, int]:
        weights = np.frombuffer(body.weights, dtype="<f4").astype(np.float32)
        if weights.size != body.dim:
            raise ValueError(f"model has {weights.size} values, the round expects {body.dim}")
        began = self._clock()
        delta, examples = self._trainer.train(weights, round_id)
        if delta.shape != weights.shape:
            raise ValueError(f"trainer returned {delta.shape}, model has {weights.shape}")
        if examples < 1:
            raise ValueError("training used no examples")
        clipped = np.clip(delta.astype(np.float32), -body.clip, body.clip)
        now = self._clock()
        log.info(
            "local update ready",
            extra={"round": round_id, "examples": examples, "train_s": now - began},
        )
        if now > body.deadline:
            log.warning("training overran the round deadline", extra={"round": round_id})
        return clipped, examples

    def _decline(self, round_id: int, reason: str, detail: str) -> SignedResult:
        """Refuse a round whose enclave this device does not trust, and say why (signed)."""
        log.warning("round declined", extra={"round": round_id, "reason": reason, "why": detail})
        self._report.dropped += 1
        notice = Notice(kind="declined", reason=reason[:64], detail=detail[:500])
        result = self._results.notice(round_id, 0, notice)
        self._answer = _Answer(round_id, result)
        return result

    # ---- endings --------------------------------------------------------------------------------

    def delivered(self, result: SignedResult) -> bool:
        """The upload was accepted: the round is completed for this device."""
        current = self._answer
        if current is None or current.round_id != result.round_id:
            return False
        self._answer = None
        if decode_notice(result.message) is not None:
            return False
        self._report.complete(result.round_id)
        return True

    def rejected(self, result: SignedResult, why: str) -> None:
        """The server rejected our upload (e.g. the enclave excluded it): drop the round."""
        current = self._answer
        if current is not None and current.round_id == result.round_id:
            self._answer = None
            if decode_notice(result.message) is None:
                self._report.drop(result.round_id, 0, why)

    def position(self) -> tuple[int, int] | None:
        """The round this device answered and the server has not yet accepted, if any."""
        current = self._answer
        return (current.round_id, 0) if current is not None else None

    def abandon(self, why: str | None) -> None:
        """Forget the answer in progress."""
        if why is not None and self._answer is not None:
            log.warning("round abandoned", extra={"round": self._answer.round_id, "why": why})
        self._answer = None
