"""Who may join a CHRONOS epoch: an endorsed keystore key, attested unless the operator says not.

The keystore key must be endorsed by the device's certified identity key and, unless the
operator allows software keystores, attested by an enclave running the CHRONOS trusted app. The
server checks attestation evidence itself before it admits a device: the platform chain must
end at a configured root (the *simulated* manufacturer root is refused unless
``attestation_allow_simulated``), the measurement must be the CHRONOS trusted application's, the
evidence must answer the join's fresh nonce and bind the very key the device endorsed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from qflare.crypto import CryptoError, SignatureScheme, verify_signature
from qflare.protocol.identity import ENDORSE_CONTEXT, endorsement_transcript
from qflare.protocol.wire import ChronosJoined
from qflare.server.settings import ServerSettings
from qflare.tee import (
    AttestationError,
    VerificationPolicy,
    reference_measurement,
    report_data_for,
    verify_evidence,
)
from qflare.tee.chronos_ta import CHRONOS_TA

__all__ = ["Admission", "Refused"]


class Refused(Exception):  # noqa: N818 - a decision, carried with its reason
    """A device may not join the epoch; the message says why (logged, shown to the operator)."""


@dataclass(frozen=True)
class Admission:
    """The server's admission check for CHRONOS keystores.

    Attributes:
        require_enclave: Only attested enclave keystores may join.
        policy: What evidence is accepted.
    """

    require_enclave: bool
    policy: VerificationPolicy

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> Admission:
        """Roots from the configured files, the CHRONOS TA's reference measurement."""
        roots = tuple(Path(p).read_bytes() for p in settings.attestation_roots)
        measurements = {reference_measurement(CHRONOS_TA)}
        measurements |= {bytes.fromhex(h) for h in settings.attestation_measurements}
        policy = VerificationPolicy(
            trusted_roots=roots,
            measurements=frozenset(measurements),
            allow_simulated=settings.attestation_allow_simulated,
        )
        return cls(require_enclave=settings.chronos_keystores == "enclave", policy=policy)

    def check(
        self,
        joined: ChronosJoined,
        *,
        scheme: SignatureScheme,
        device_pk: bytes,
        session: str,
        index: int,
        nonce: bytes,
    ) -> None:
        """Admit ``joined`` or raise :class:`Refused`.

        Raises:
            Refused: a keystore key the device did not endorse, or (when enclaves are required)
                no evidence, or evidence that fails any check.
        """
        self._endorsed(joined, scheme=scheme, device_pk=device_pk, session=session, index=index)
        if not self.require_enclave:
            return
        if not joined.enclave or not joined.evidence:
            raise Refused("this federation admits only attested enclave keystores")
        try:
            verify_evidence(
                joined.evidence,
                policy=self.policy,
                report_data=report_data_for(joined.identity_pk, nonce),
                now=time.time(),
            )
        except (AttestationError, ValueError) as exc:
            raise Refused(f"attestation refused: {exc}") from None

    @staticmethod
    def _endorsed(
        joined: ChronosJoined,
        *,
        scheme: SignatureScheme,
        device_pk: bytes,
        session: str,
        index: int,
    ) -> None:
        entry = joined.endorsement
        if entry is None:
            raise Refused("no endorsement of the keystore key")
        key = entry.keystore_pk or device_pk
        if key != joined.identity_pk or (not entry.keystore_pk and joined.identity_pk != device_pk):
            raise Refused("the endorsement names another key")
        if not entry.keystore_pk:
            return
        transcript = endorsement_transcript(session, index, key, enclave=entry.enclave)
        try:
            verify_signature(
                scheme, device_pk, entry.endorsement, transcript, context=ENDORSE_CONTEXT
            )
        except CryptoError:
            raise Refused("the device did not endorse this keystore key") from None
