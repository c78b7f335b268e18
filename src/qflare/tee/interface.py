"""The enclave interface that a trusted-execution backend implements.

The shape follows the GlobalPlatform TEE Client API as used by OP-TEE: the normal world opens a
session to one trusted application (TA) and calls ``invoke`` (``TEEC_InvokeCommand``) with a
command id and typed parameters. Around it sit the platform services every backend offers in
some form: a measurement of the TA, attestation evidence, sealing bound to the measurement, and
named monotonic counters (RPMB on OP-TEE, the platform services on SGX, NitroTPM on Nitro).

The only backend shipped is :class:`qflare.tee.sim.SimEnclave`, a *simulated* TEE that runs the
TA in a separate OS process. It gives process isolation, not hardware isolation.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

REPORT_DATA_BYTES = 64
"""Size of the caller data bound into evidence, e.g. ``H(public key) || nonce``."""


class Enclave(Protocol):
    """A running trusted application together with the platform services around it."""

    @property
    def measurement(self) -> bytes:
        """Hash of the trusted application's code and configuration (32 bytes)."""
        ...

    def evidence(self, report_data: bytes) -> bytes:
        """Return signed attestation evidence binding ``report_data`` (64 bytes).

        ``report_data`` is ``key_digest(public_key) || nonce``; the enclave signs it only for a
        key the trusted application holds (a backend fills it in the TA, as SGX's EREPORT does).

        Raises:
            AttestationError: the platform cannot attest (e.g. not provisioned), or the key half
                names a key the trusted application does not hold (``KEY_BINDING``).
        """
        ...

    def seal(self, data: bytes, *, label: str) -> bytes:
        """Encrypt ``data`` to this measurement; only the latest blob per ``label`` unseals."""
        ...

    def unseal(self, blob: bytes, *, label: str) -> bytes:
        """Decrypt a blob made by :meth:`seal` with the same ``label`` and measurement.

        Raises:
            UnsealError: the blob is tampered or bound to another measurement or label.
            RollbackDetected: the blob is not the latest for ``label``, or secure storage is
                older than the blob.
        """
        ...

    def counter_read(self, name: str) -> int:
        """Current value of the named monotonic counter (0 if never advanced)."""
        ...

    def counter_advance(self, name: str, to_value: int) -> int:
        """Move the named counter to ``to_value`` and return it.

        Raises:
            CounterReuse: ``to_value`` is not greater than the current value.
        """
        ...

    def invoke(self, command_id: int, params: msgspec.Struct) -> msgspec.Struct:
        """Run one of the trusted application's own commands inside the enclave.

        Raises:
            UnknownCommand: the TA has no such command.
            TrustedAppError: the handler failed.
        """
        ...

    def close(self) -> None:
        """Shut the enclave down; further calls fail. Idempotent."""
        ...
