"""The *simulated* TEE backend: the trusted application runs in a separate OS process.

:class:`SimEnclave` starts ``python -m qflare.tee.enclave_main`` with one end of a socket pair
and talks to it only through :mod:`qflare.tee.wire` frames. Keys made by the trusted application
and the simulated hardware-unique key exist only in that process (and, for the HUK, in the
0600 file of its trusted storage). An optional :class:`ChannelTap` sees every frame in both
directions, so tests can check what crosses the boundary.

This is process isolation, not hardware isolation: a root user on the host can read the
enclave's memory and state directory. Evidence from this backend says ``simulated=True``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Literal, NoReturn, Protocol, TypeVar

import msgspec

from qflare.crypto import SignatureScheme
from qflare.tee import wire
from qflare.tee.certs import SimulatedRootCa
from qflare.tee.errors import (
    AttestationError,
    AttestationFailure,
    CounterReuse,
    EnclaveCrashed,
    EnclaveError,
    RollbackDetected,
    SecureStorageError,
    TrustedAppError,
    UnknownCommand,
    UnsealError,
)
from qflare.tee.ta import TaManifest

Direction = Literal["to_enclave", "to_host"]
_R = TypeVar("_R", bound=wire.Message)
_ERRORS: tuple[type[EnclaveError], ...] = (
    EnclaveError,
    EnclaveCrashed,
    UnknownCommand,
    TrustedAppError,
    CounterReuse,
    RollbackDetected,
    UnsealError,
    SecureStorageError,
)


class ChannelTap(Protocol):
    """Observer of every frame on the host-enclave channel."""

    def __call__(self, direction: Direction, frame: bytes) -> None:
        """Record or inspect one frame."""
        ...


class RecordingTap:
    """A :class:`ChannelTap` that keeps every frame, for tests and audits."""

    def __init__(self) -> None:
        self.frames: list[tuple[Direction, bytes]] = []

    def __call__(self, direction: Direction, frame: bytes) -> None:
        """Keep a copy of ``frame``."""
        self.frames.append((direction, bytes(frame)))

    def saw(self, needle: bytes) -> bool:
        """Whether ``needle`` appeared inside any frame, in either direction."""
        return any(needle in frame for _, frame in self.frames)

    @property
    def total_bytes(self) -> int:
        """Bytes seen so far."""
        return sum(len(frame) for _, frame in self.frames)


def _raise_failure(failure: wire.FailureResponse) -> NoReturn:
    if failure.kind == AttestationError.__name__:
        raise AttestationError(AttestationFailure(failure.reason), failure.message)
    by_name = {cls.__name__: cls for cls in _ERRORS}
    raise by_name.get(failure.kind, EnclaveError)(failure.message)


def _child_env() -> dict[str, str]:
    """The enclave process's environment: the host's, with one BLAS thread unless set.

    Measured (``qflare bench enclave``): on a loaded 2-core host, OpenBLAS's spinning threads
    made Krum 11.4 s instead of 0.6 s; a variable the operator sets wins.
    """
    env = dict(os.environ)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, "1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    return env


def _reap(process: subprocess.Popen[bytes], conn: Connection) -> None:
    conn.close()
    if process.poll() is None:
        process.kill()
    process.wait()


class _Channel:
    """One enclave process and the connection to it; one request in flight at a time."""

    def __init__(self, tap: ChannelTap | None, timeout_s: float) -> None:
        parent, child = socket.socketpair()
        with child:
            try:
                self.process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                    [sys.executable, "-m", "qflare.tee.enclave_main", str(child.fileno())],
                    pass_fds=(child.fileno(),),
                    stdin=subprocess.DEVNULL,
                    env=_child_env(),
                )
            except OSError:
                parent.close()
                raise
        self.conn = Connection(parent.detach())
        self._tap, self._timeout = tap, timeout_s
        self._lock = threading.Lock()
        self.reap = weakref.finalize(self, _reap, self.process, self.conn)

    def request(self, message: wire.Message, expect: type[_R]) -> _R:
        """Send ``message`` and return the answer, which must be of type ``expect``.

        Raises:
            EnclaveCrashed: the process died, broke the channel or did not answer in time.
            EnclaveError: the enclave refused the request (a subclass names the reason).
        """
        frame = wire.encode(message)
        with self._lock:
            if not self.reap.alive:
                raise EnclaveCrashed("the enclave is closed")
            if self._tap is not None:
                self._tap("to_enclave", frame)
            answer = self._exchange(frame)
            if self._tap is not None:
                self._tap("to_host", answer)
        try:
            response = wire.decode_response(answer)
        except (ValueError, msgspec.MsgspecError):
            raise EnclaveCrashed("enclave sent a malformed frame") from None
        if isinstance(response, wire.FailureResponse):
            _raise_failure(response)
        if not isinstance(response, expect):
            raise EnclaveCrashed(f"expected {expect.__name__}, got {type(response).__name__}")
        return response

    def _exchange(self, frame: bytes) -> bytes:
        try:
            self.conn.send_bytes(frame)
            if self.conn.poll(self._timeout):
                return self.conn.recv_bytes()
        except (EOFError, OSError):
            self.reap()
            raise EnclaveCrashed("the enclave process went away") from None
        self.reap()
        raise EnclaveCrashed(f"the enclave did not answer within {self._timeout} s")


class SimEnclave:
    """A *simulated* :class:`~qflare.tee.interface.Enclave` running one trusted application.

    Use :meth:`start`, preferably as a context manager::

        with SimEnclave.start(state_dir, KEYVAULT, provisioner=root) as enclave:
            info = call(enclave, GENERATE, GenerateKey(kind=KeyKind.X25519))
    """

    def __init__(self, channel: _Channel, manifest: TaManifest, boot: wire.BootResponse) -> None:
        self._channel, self._manifest, self._boot = channel, manifest, boot

    @classmethod
    def start(
        cls,
        state_dir: Path | str,
        ta: TaManifest,
        *,
        config: bytes = b"",
        platform_id: str = "sim-platform",
        platform_scheme: SignatureScheme = SignatureScheme.MLDSA65,
        provisioner: SimulatedRootCa | None = None,
        tap: ChannelTap | None = None,
        timeout_s: float = 60.0,
    ) -> SimEnclave:
        """Start an enclave process for ``ta`` on the device whose state is ``state_dir``.

        On first boot the process makes the device's simulated hardware-unique key. If the
        platform has no certificate yet and ``provisioner`` is given, it certifies the
        platform's attestation key (otherwise :meth:`evidence` raises ``NOT_PROVISIONED``).

        Raises:
            EnclaveError: the process could not boot the TA.
        """
        channel = _Channel(tap, timeout_s)
        boot = wire.BootRequest(
            state_dir=str(Path(state_dir).resolve()),
            ta_name=ta.name,
            ta_version=ta.version,
            ta_module=ta.module,
            measured_modules=ta.measured_modules,
            config=config,
            platform_id=platform_id,
            platform_scheme=platform_scheme,
        )
        try:
            enclave = cls(channel, ta, channel.request(boot, wire.BootResponse))
            if provisioner is not None and not enclave._boot.provisioned:
                enclave.provision(provisioner)
        except BaseException:
            channel.reap()
            raise
        return enclave

    def provision(self, root: SimulatedRootCa) -> None:
        """Have the simulated manufacturer ``root`` certify this platform's attestation key."""
        certificate = root.certify_platform(
            platform_id=self._boot.platform_id,
            scheme=self._boot.platform_scheme,
            public_key=self._boot.platform_public_key,
            now=time.time(),
        )
        self._channel.request(
            wire.InstallCertificateRequest(certificate=certificate), wire.OkResponse
        )

    @property
    def measurement(self) -> bytes:
        """Measurement reported by the enclave at boot."""
        return self._boot.measurement

    @property
    def platform_public_key(self) -> bytes:
        """The platform's public attestation key."""
        return self._boot.platform_public_key

    @property
    def pid(self) -> int:
        """Process id of the enclave process."""
        return self._channel.process.pid

    @property
    def alive(self) -> bool:
        """Whether the enclave process is running and not closed."""
        return self._channel.reap.alive and self._channel.process.poll() is None

    def evidence(self, report_data: bytes) -> bytes:
        """Signed, *simulated* attestation evidence over ``report_data`` (64 bytes)."""
        request = wire.EvidenceRequest(report_data=report_data)
        return self._channel.request(request, wire.BytesResponse).value

    def seal(self, data: bytes, *, label: str) -> bytes:
        """Seal host ``data`` to this measurement; earlier blobs of ``label`` stop unsealing."""
        return self._channel.request(
            wire.SealRequest(data=data, label=label), wire.BytesResponse
        ).value

    def unseal(self, blob: bytes, *, label: str) -> bytes:
        """Unseal the latest host blob of ``label``."""
        request = wire.UnsealRequest(blob=blob, label=label)
        return self._channel.request(request, wire.BytesResponse).value

    def counter_read(self, name: str) -> int:
        """Current value of a named monotonic counter."""
        return self._channel.request(wire.CounterReadRequest(name=name), wire.CounterResponse).value

    def counter_advance(self, name: str, to_value: int) -> int:
        """Advance a named monotonic counter; refuses values not above the current one."""
        request = wire.CounterAdvanceRequest(name=name, to_value=to_value)
        return self._channel.request(request, wire.CounterResponse).value

    def invoke(self, command_id: int, params: msgspec.Struct) -> msgspec.Struct:
        """Run a TA command (``TEEC_InvokeCommand``); parameters are checked against the manifest."""
        command = self._manifest.command(command_id)
        if not isinstance(params, command.params):
            raise TypeError(f"{command.name} takes {command.params.__name__}")
        request = wire.InvokeRequest(command_id=command_id, params=msgspec.msgpack.encode(params))
        raw = self._channel.request(request, wire.BytesResponse).value
        try:
            result: msgspec.Struct = msgspec.msgpack.decode(raw, type=command.result)
        except (msgspec.MsgspecError, ValueError):  # ValueError: invalid UTF-8
            raise EnclaveError(f"{command.name} returned a malformed result") from None
        return result

    def close(self) -> None:
        """Ask the process to exit, then reap it (killing it if it does not). Idempotent."""
        channel = self._channel
        if channel.reap.alive:
            try:
                channel.request(wire.ShutdownRequest(), wire.OkResponse)
                channel.process.wait(timeout=5)
            except (EnclaveError, subprocess.TimeoutExpired):
                pass
            channel.reap()

    def __enter__(self) -> SimEnclave:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.alive else "closed"
        return f"SimEnclave({self._manifest.name!r}, pid={self.pid}, {state}, simulated)"
