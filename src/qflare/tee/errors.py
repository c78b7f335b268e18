"""Exceptions raised by :mod:`qflare.tee`. Every check raises; none returns ``False``."""

from __future__ import annotations

import enum


class TeeError(Exception):
    """Base class of every enclave and attestation failure."""


class EnclaveError(TeeError):
    """The enclave refused a request or could not serve it."""


class EnclaveCrashed(EnclaveError):  # noqa: N818 - reads as the event it reports
    """The enclave process died, timed out, or its command channel broke."""


class UnknownCommand(EnclaveError):  # noqa: N818 - reads as the event it reports
    """The trusted application has no handler for the requested command id."""


class TrustedAppError(EnclaveError):
    """A trusted-application handler failed.

    Only the messages of TEE, ``qflare.crypto`` and validation errors cross the channel; any
    other exception a handler raises crosses as its type name alone.
    """


class CounterReuse(EnclaveError):  # noqa: N818 - reads as the event it reports
    """A monotonic counter was asked to move to a value it already had or passed."""


class RollbackDetected(EnclaveError):  # noqa: N818 - reads as the event it reports
    """A sealed blob or the secure counter store is older than the other one."""


class UnsealError(EnclaveError):
    """A sealed blob is malformed, tampered, or bound to another enclave, owner or label."""


class SecureStorageError(EnclaveError):
    """Trusted storage (hardware-unique key or counter file) is missing, exposed or forged."""


class AttestationFailure(enum.StrEnum):
    """Why evidence was refused (or could not be produced)."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad-signature"
    UNTRUSTED_CHAIN = "untrusted-chain"
    SIMULATED = "simulated"
    MEASUREMENT = "measurement"
    STALE = "stale"
    KEY_BINDING = "key-binding"
    NOT_PROVISIONED = "not-provisioned"


class AttestationError(TeeError):
    """Evidence was refused by a verifier, or the enclave could not produce it.

    Args:
        reason: Machine-readable cause.
        message: Human-readable detail.
    """

    def __init__(self, reason: AttestationFailure, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.detail = message
