"""EnclaveParticipant without a server: one answer per round, declines, re-sends."""

from __future__ import annotations

import msgspec
import numpy as np
import numpy.typing as npt

from qflare.crypto import DeterministicRng, Ed25519Signer
from qflare.node import ConstantTrainer
from qflare.participant.base import ResultSigner, RunReport
from qflare.participant.enclave import EnclaveParticipant
from qflare.protocol.enclave import round_nonce
from qflare.protocol.wire import EnclaveTask, Notice, Task
from qflare.tee import AttestationError
from qflare.tee.errors import AttestationFailure

DIM = 6


class FakeSealer:
    """Trusts evidence ``b"good"`` only; seals to ``b"sealed:<round>"``, once per round."""

    session = "qflare"

    def __init__(self) -> None:
        self.sealed: list[tuple[int, npt.NDArray[np.floating]]] = []

    def trust_round(self, evidence: bytes, *, public_key: bytes, round_id: int) -> object:
        if evidence != b"good":
            raise AttestationError(AttestationFailure.MEASUREMENT, "not the pinned enclave")
        return object()

    def seal(
        self, round_id: int, vector: npt.NDArray[np.floating], *, weight: float = 1.0
    ) -> bytes:
        if any(r == round_id for r, _ in self.sealed):
            raise RuntimeError("sealed twice")
        self.sealed.append((round_id, vector))
        return f"sealed:{round_id}".encode()


def _task(round_id: int, *, evidence: bytes = b"good", nonce: bytes | None = None) -> Task:
    body = EnclaveTask(
        session="qflare",
        model_version=0,
        weights=np.zeros(DIM, dtype="<f4").tobytes(),
        dim=DIM,
        clip=0.01,
        enclave_key=b"k",
        evidence=evidence,
        nonce=round_nonce("qflare", round_id) if nonce is None else nonce,
        deadline=1e12,
    )
    return Task(round_id=round_id, step=0, body=body)


def _participant() -> tuple[EnclaveParticipant, FakeSealer, RunReport]:
    signer = Ed25519Signer.generate(DeterministicRng(b"dev"))
    sealer, report = FakeSealer(), RunReport()
    part = EnclaveParticipant(ResultSigner("dev-0", signer), ConstantTrainer(1), sealer, report)
    return part, sealer, report


def test_uploads_once_and_resends_the_same_answer() -> None:
    part, sealer, report = _participant()
    first = part.handle(_task(1))
    assert first is not None and first.message == b"sealed:1"
    assert part.handle(_task(1)) is first  # lost answer: the same one again, no second seal
    assert len(sealer.sealed) == 1
    assert np.abs(sealer.sealed[0][1]).max() <= 0.01  # clipped to [-clip, clip]
    assert part.delivered(first) and report.completed == 1


def _notice(message: bytes) -> Notice:
    return msgspec.msgpack.decode(message, type=Notice)


def test_evidence_that_fails_is_declined_with_a_signed_notice() -> None:
    part, sealer, report = _participant()
    result = part.handle(_task(2, evidence=b"forged"))
    assert result is not None and not sealer.sealed
    notice = _notice(result.message)
    assert (notice.kind, notice.reason) == ("declined", "attestation-measurement")
    assert not part.delivered(result) and report.dropped == 1


def test_another_rounds_nonce_is_declined() -> None:
    part, sealer, _ = _participant()
    result = part.handle(_task(3, nonce=round_nonce("qflare", 2)))
    assert result is not None and not sealer.sealed
    assert _notice(result.message).reason == "attestation-stale"
