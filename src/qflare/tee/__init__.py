"""Trusted execution: an enclave interface and a *simulated* backend.

* :mod:`qflare.tee.interface` -- the :class:`Enclave` protocol a real backend (OP-TEE TA,
  SGX/Gramine, AWS Nitro) would implement.
* :mod:`qflare.tee.ta` -- how a trusted application declares and registers its commands.
* :mod:`qflare.tee.sim` -- :class:`SimEnclave`, the simulated backend (a separate OS process).
* :mod:`qflare.tee.attestation` / :mod:`qflare.tee.certs` -- COSE_Sign1-shaped evidence, a
  simulated manufacturer PKI, and a verifier that refuses simulated evidence unless allowed.
* :mod:`qflare.tee.storage` -- state layout and the trusted-storage report.
"""

from qflare.tee.attestation import (
    AttestationResult,
    AttestationVerifier,
    EvidenceClaims,
    VerificationPolicy,
    key_digest,
    report_data_for,
    verify_evidence,
)
from qflare.tee.certs import SimulatedRootCa
from qflare.tee.errors import (
    AttestationError,
    AttestationFailure,
    CounterReuse,
    EnclaveCrashed,
    EnclaveError,
    RollbackDetected,
    SecureStorageError,
    TeeError,
    TrustedAppError,
    UnknownCommand,
    UnsealError,
)
from qflare.tee.interface import REPORT_DATA_BYTES, Enclave
from qflare.tee.measurement import reference_measurement
from qflare.tee.sim import ChannelTap, RecordingTap, SimEnclave
from qflare.tee.storage import StorageReport, storage_report
from qflare.tee.ta import Command, CommandTable, TaContext, TaManifest, call

__all__ = [
    "REPORT_DATA_BYTES",
    "AttestationError",
    "AttestationFailure",
    "AttestationResult",
    "AttestationVerifier",
    "ChannelTap",
    "Command",
    "CommandTable",
    "CounterReuse",
    "Enclave",
    "EnclaveCrashed",
    "EnclaveError",
    "EvidenceClaims",
    "RecordingTap",
    "RollbackDetected",
    "SecureStorageError",
    "SimEnclave",
    "SimulatedRootCa",
    "StorageReport",
    "TaContext",
    "TaManifest",
    "TeeError",
    "TrustedAppError",
    "UnknownCommand",
    "UnsealError",
    "VerificationPolicy",
    "call",
    "reference_measurement",
    "key_digest",
    "report_data_for",
    "storage_report",
    "verify_evidence",
]
