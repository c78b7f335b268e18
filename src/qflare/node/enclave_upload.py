"""The node's side of enclave aggregation: attest the server's enclave, then seal the update.

A node trusts an enclave key only after verifying evidence for it: the platform chain must end
at a trusted root, the measurement must be the one the node pinned (which covers the TA code
*and* its configuration: the enrollment authority and the ``min_accepted`` floor, see
:func:`qflare.tee.aggregator_ta.aggregator_measurement`), the evidence must answer the node's
own fresh nonce and bind exactly that key. Simulated evidence is refused unless the policy
allows it. Only then does :meth:`EnclaveUploader.seal` encrypt an update to the key, and it
seals at most one update per round (an update sent to two enclave keys could be aggregated in
two different subsets).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from qflare.crypto import Rng, Signer
from qflare.participant.base import ParticipantFactory, ResultSigner, RunReport, Trainer
from qflare.participant.enclave import EnclaveParticipant
from qflare.protocol.enclave import encode_upload, round_nonce, seal_update
from qflare.tee.aggregator_ta import AggregatorConfig, aggregator_measurement
from qflare.tee.attestation import (
    AttestationResult,
    AttestationVerifier,
    VerificationPolicy,
    report_data_for,
    verify_evidence,
)


class EnclaveNotTrusted(RuntimeError):  # noqa: N818 - reads as the state it reports
    """No enclave key has been attested yet, or the node already uploaded for this round."""


def enclave_policy(
    config: AggregatorConfig,
    trusted_roots: tuple[bytes, ...],
    *,
    allow_simulated: bool = False,
    max_age_s: float = 300.0,
) -> VerificationPolicy:
    """The policy pinning the aggregator TA measurement for ``config`` (simulated: refused)."""
    return VerificationPolicy(
        trusted_roots=trusted_roots,
        measurements=frozenset({aggregator_measurement(config)}),
        allow_simulated=allow_simulated,
        max_age_s=max_age_s,
    )


def pinned_policy(
    measurement: bytes,
    trusted_roots: tuple[bytes, ...],
    *,
    allow_simulated: bool = False,
    max_age_s: float = 300.0,
) -> VerificationPolicy:
    """The policy of a node that pinned ``measurement`` (``qflare node run --enclave-measurement``).

    Raises:
        ValueError: ``measurement`` is not 32 bytes.
    """
    if len(measurement) != 32:
        raise ValueError("an enclave measurement is 32 bytes (64 hex digits)")
    return VerificationPolicy(
        trusted_roots=trusted_roots,
        measurements=frozenset({measurement}),
        allow_simulated=allow_simulated,
        max_age_s=max_age_s,
    )


class EnclaveUploader:
    """Attests an aggregation enclave, then seals this device's updates to it.

    Args:
        device_id: This device's id (as its certificate names it).
        signer: This device's identity key.
        session: The federation session.
        policy: What evidence to accept (see :func:`enclave_policy`).
        rng: Randomness for nonces and encapsulation.
        clock: Current time in Unix seconds.
    """

    def __init__(
        self,
        *,
        device_id: str,
        signer: Signer,
        session: str,
        policy: VerificationPolicy,
        rng: Rng,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._device, self._signer, self._session, self._rng = device_id, signer, session, rng
        self._verifier = AttestationVerifier(policy, rng=rng, clock=clock)
        self._clock = clock
        self._key: bytes | None = None
        self._sealed_rounds: set[int] = set()

    def challenge(self) -> bytes:
        """A fresh one-time nonce for the enclave's evidence."""
        return self._verifier.challenge()

    def trust(self, evidence: bytes, *, public_key: bytes, nonce: bytes) -> AttestationResult:
        """Verify ``evidence`` for ``public_key`` and our ``nonce``; on success, use that key.

        Raises:
            qflare.tee.AttestationError: untrusted chain, bad signature, simulated (not allowed),
                wrong measurement, stale or foreign nonce, or a key the evidence does not bind.
        """
        result = self._verifier.verify(evidence, public_key=public_key, nonce=nonce)
        self._key = public_key
        return result

    def trust_round(
        self, evidence: bytes, *, public_key: bytes, round_id: int
    ) -> AttestationResult:
        """Verify a served round's ``evidence`` for ``public_key``; on success, use that key.

        The challenge is :func:`~qflare.protocol.enclave.round_nonce` of this node's session and
        ``round_id`` (a pull-model round has no earlier message to carry a node's own nonce);
        round ids are never reused, and the evidence timestamp must be within the policy's age.

        Raises:
            qflare.tee.AttestationError: any check failed (as in :meth:`trust`).
        """
        self._key = None  # a failed check leaves no key from an earlier round usable
        result = verify_evidence(
            evidence,
            policy=self._verifier.policy,
            report_data=report_data_for(public_key, round_nonce(self._session, round_id)),
            now=self._clock(),
        )
        self._key = public_key
        return result

    @property
    def session(self) -> str:
        """The federation session uploads are bound to."""
        return self._session

    @property
    def enclave_key(self) -> bytes | None:
        """The attested enclave key, if any."""
        return self._key

    def seal(
        self, round_id: int, vector: npt.NDArray[np.floating], *, weight: float = 1.0
    ) -> bytes:
        """The encoded, encrypted and signed upload of ``vector`` for ``round_id``.

        Raises:
            EnclaveNotTrusted: no attested key yet, or this node already sealed for the round.
        """
        if self._key is None:
            raise EnclaveNotTrusted("attest the enclave before uploading to it")
        if round_id in self._sealed_rounds:
            raise EnclaveNotTrusted(f"an update for round {round_id} was already sealed")
        upload = seal_update(
            vector,
            weight=weight,
            session=self._session,
            round_id=round_id,
            device_id=self._device,
            enclave_public_key=self._key,
            signer=self._signer,
            rng=self._rng,
        )
        self._sealed_rounds.add(round_id)
        return encode_upload(upload)


def enclave_participant(
    trainer: Trainer,
    policy: VerificationPolicy,
    rng: Rng,
    *,
    session: str = "qflare",
    clock: Callable[[], float] = time.time,
) -> ParticipantFactory:
    """The :class:`~qflare.node.runner.NodeRunner` factory of this device's enclave participant.

    Its uploader verifies each round's evidence against ``policy`` (the pinned measurement)
    and seals with the device's identity key.
    """

    def make(results: ResultSigner, report: RunReport) -> EnclaveParticipant:
        uploader = EnclaveUploader(
            device_id=results.device_id,
            signer=results.signer,
            session=session,
            policy=policy,
            rng=rng,
            clock=clock,
        )
        return EnclaveParticipant(results, trainer, uploader, report, clock=clock)

    return make
