"""The inside of the simulated enclave: platform services and the loaded trusted application.

Everything here runs in the enclave process only (see :mod:`qflare.tee.enclave_main`). The
hardware-unique key, the platform attestation key and every TA secret are objects of this
process; the host sees only the frames of :mod:`qflare.tee.wire`.
"""

from __future__ import annotations

import hmac
import importlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import msgspec

from qflare.crypto import (
    CryptoError,
    Ed25519Signer,
    HybridSigner,
    Label,
    MlDsa65Signer,
    NoPickle,
    Rng,
    SecretBytes,
    SignatureScheme,
    Signer,
    hkdf,
)
from qflare.tee import wire
from qflare.tee.attestation import EvidenceClaims, key_digest, sign_evidence
from qflare.tee.certs import parse_certificate
from qflare.tee.errors import (
    AttestationError,
    AttestationFailure,
    EnclaveError,
    RollbackDetected,
    TeeError,
    TrustedAppError,
)
from qflare.tee.interface import REPORT_DATA_BYTES
from qflare.tee.measurement import compute_measurement
from qflare.tee.rpmb import SimulatedRpmb
from qflare.tee.sealing import SEAL_SALT_BYTES, SealedHeader, SealOwner, open_blob, seal_blob
from qflare.tee.storage import StateLayout, load_or_create_huk
from qflare.tee.ta import CommandTable, TaContext

_MAX_NAME = 128


def _check_name(kind: str, name: str) -> None:
    if not name or len(name) > _MAX_NAME:
        raise EnclaveError(f"{kind} name must have 1 to {_MAX_NAME} characters")


class PlatformServices(NoPickle):
    """Sealing and counters of one TA, backed by the HUK and the simulated RPMB.

    Args:
        huk: The hardware-unique key.
        rpmb: The counter store.
        measurement: The TA's measurement (seals are bound to it).
        ta_name: The TA's name (counters are namespaced by it).
        rng: The enclave's CSPRNG.
    """

    def __init__(
        self, huk: SecretBytes, rpmb: SimulatedRpmb, measurement: bytes, ta_name: str, rng: Rng
    ) -> None:
        self._huk, self._rpmb, self._rng = huk, rpmb, rng
        self.measurement, self._ta = measurement, ta_name

    def _seal_key(self, owner: SealOwner, label: str) -> str:
        _check_name("seal label", label)
        return f"{self._ta}/seal/{owner.value}/{label}"

    def seal(self, owner: SealOwner, data: bytes | SecretBytes, label: str) -> bytes:
        """Advance the (owner, label) seal counter, then seal ``data`` under the new value."""
        key = self._seal_key(owner, label)
        counter = self._rpmb.advance(key, self._rpmb.read(key) + 1)
        header = SealedHeader(
            owner=owner,
            label=label,
            measurement=self.measurement,
            counter=counter,
            salt=self._rng.random_bytes(SEAL_SALT_BYTES),
        )
        return seal_blob(self._huk, header, data)

    def unseal(self, owner: SealOwner, blob: bytes, label: str) -> SecretBytes:
        """Open ``blob`` and refuse it unless it is the latest sealed under (owner, label)."""
        key = self._seal_key(owner, label)
        header, data = open_blob(
            self._huk, blob, measurement=self.measurement, owner=owner, label=label
        )
        current = self._rpmb.read(key)
        if header.counter < current:
            raise RollbackDetected(
                f"sealed blob {label!r} is version {header.counter}; the latest is {current}"
            )
        if header.counter > current:
            raise RollbackDetected(
                f"secure storage is at version {current} but blob {label!r} is version "
                f"{header.counter}: the counter file was rolled back"
            )
        return data

    def counter_read(self, name: str) -> int:
        """Read a named counter."""
        _check_name("counter", name)
        return self._rpmb.read(f"{self._ta}/counter/{name}")

    def counter_advance(self, name: str, to_value: int) -> int:
        """Advance a named counter (refuses values not above the current one)."""
        _check_name("counter", name)
        return self._rpmb.advance(f"{self._ta}/counter/{name}", to_value)


class _TaContext:
    """The :class:`~qflare.tee.ta.TaContext` given to a TA: services with owner ``TA``."""

    def __init__(self, services: PlatformServices, rng: Rng, config: bytes) -> None:
        self._services, self._rng, self._config = services, rng, config

    @property
    def rng(self) -> Rng:
        return self._rng

    @property
    def measurement(self) -> bytes:
        return self._services.measurement

    @property
    def config(self) -> bytes:
        return self._config

    def seal(self, data: bytes | SecretBytes, *, label: str) -> bytes:
        return self._services.seal(SealOwner.TA, data, label)

    def unseal(self, blob: bytes, *, label: str) -> SecretBytes:
        return self._services.unseal(SealOwner.TA, blob, label)

    def counter_read(self, name: str) -> int:
        return self._services.counter_read(name)

    def counter_advance(self, name: str, to_value: int) -> int:
        return self._services.counter_advance(name, to_value)


def _load_table(boot: wire.BootRequest, ctx: TaContext) -> CommandTable:
    module = importlib.import_module(boot.ta_module)
    build = cast(Callable[[TaContext], CommandTable], getattr(module, "build", None))
    if not callable(build):
        raise EnclaveError(f"TA module {boot.ta_module} defines no build(ctx) function")
    table = build(ctx)
    manifest = table.manifest
    if (manifest.name, manifest.version, manifest.module) != (
        boot.ta_name,
        boot.ta_version,
        boot.ta_module,
    ):
        raise EnclaveError("TA module built a table for another manifest")
    table.check_complete()
    return table


def platform_signer(huk: SecretBytes, platform_id: str, scheme: SignatureScheme) -> Signer:
    """The platform attestation key, derived from the HUK (the TA cannot reach it)."""

    def seed(algorithm: str) -> SecretBytes:
        return hkdf(huk, Label(f"tee/platform-key/{algorithm}", extra=platform_id.encode()))

    if scheme is SignatureScheme.MLDSA65:
        return MlDsa65Signer(seed("mldsa65"))
    if scheme is SignatureScheme.ED25519:
        return Ed25519Signer(seed("ed25519"))
    return HybridSigner(MlDsa65Signer(seed("mldsa65")), Ed25519Signer(seed("ed25519")))


class EnclaveRuntime(NoPickle):
    """Serves :mod:`qflare.tee.wire` requests inside the enclave process.

    Args:
        boot: The boot request from the host.
        rng: The enclave's CSPRNG.
    """

    def __init__(self, boot: wire.BootRequest, rng: Rng) -> None:
        _check_name("platform id", boot.platform_id)
        self._boot = boot
        self._layout = StateLayout(Path(boot.state_dir))
        self._layout.ensure()
        huk = load_or_create_huk(self._layout.huk_path, rng)
        rpmb = SimulatedRpmb(self._layout.rpmb_path, hkdf(huk, Label("tee/rpmb-mac")))
        self.measurement = compute_measurement(
            name=boot.ta_name,
            version=boot.ta_version,
            module=boot.ta_module,
            measured_modules=boot.measured_modules,
            config=boot.config,
        )
        self._services = PlatformServices(huk, rpmb, self.measurement, boot.ta_name, rng)
        self._platform = platform_signer(huk, boot.platform_id, boot.platform_scheme)
        self._table = _load_table(boot, _TaContext(self._services, rng, boot.config))

    def boot_response(self) -> wire.BootResponse:
        """Tell the host the measurement and the platform's public attestation key."""
        return wire.BootResponse(
            measurement=self.measurement,
            platform_id=self._boot.platform_id,
            platform_scheme=self._platform.scheme,
            platform_public_key=self._platform.public_key,
            provisioned=self._layout.platform_chain_path.exists(),
        )

    def handle(self, request: wire.Request) -> wire.Response:
        """Serve one request; every failure becomes a :class:`~qflare.tee.wire.FailureResponse`."""
        try:
            return self._dispatch(request)
        except AttestationError as exc:
            return wire.FailureResponse(
                kind=type(exc).__name__, message=exc.detail, reason=exc.reason
            )
        except TeeError as exc:
            return wire.FailureResponse(kind=type(exc).__name__, message=str(exc))
        except (CryptoError, ValueError, msgspec.MsgspecError) as exc:
            return wire.FailureResponse(kind=TrustedAppError.__name__, message=str(exc))
        except Exception as exc:  # a TA bug: report its type only, never its message
            return wire.FailureResponse(
                kind=TrustedAppError.__name__, message=f"TA raised {type(exc).__name__}"
            )

    def _dispatch(self, request: wire.Request) -> wire.Response:
        services = self._services
        match request:
            case wire.InvokeRequest(command_id=command_id, params=params):
                return wire.BytesResponse(value=self._table.dispatch(command_id, params))
            case wire.EvidenceRequest(report_data=report_data):
                return wire.BytesResponse(value=self._evidence(report_data))
            case wire.SealRequest(data=data, label=label):
                return wire.BytesResponse(value=services.seal(SealOwner.HOST, data, label))
            case wire.UnsealRequest(blob=blob, label=label):
                opened = services.unseal(SealOwner.HOST, blob, label)
                return wire.BytesResponse(value=opened.reveal())
            case wire.CounterReadRequest(name=name):
                return wire.CounterResponse(value=services.counter_read(name))
            case wire.CounterAdvanceRequest(name=name, to_value=to_value):
                return wire.CounterResponse(value=services.counter_advance(name, to_value))
            case wire.InstallCertificateRequest(certificate=certificate):
                self._install_certificate(certificate)
                return wire.OkResponse()
        raise EnclaveError(f"unexpected request {type(request).__name__}")

    def _install_certificate(self, certificate: bytes) -> None:
        body, _ = parse_certificate(certificate)
        if body.public_key != self._platform.public_key or body.subject != self._boot.platform_id:
            raise EnclaveError("certificate does not certify this platform's attestation key")
        chain = msgspec.msgpack.encode((certificate,))
        self._layout.platform_chain_path.write_bytes(chain)

    def _evidence(self, report_data: bytes) -> bytes:
        if len(report_data) != REPORT_DATA_BYTES:
            raise EnclaveError(f"report data must be {REPORT_DATA_BYTES} bytes")
        path = self._layout.platform_chain_path
        if not path.exists():
            raise AttestationError(
                AttestationFailure.NOT_PROVISIONED, "platform has no certificate; provision it"
            )
        self._check_key_binding(report_data)
        chain = msgspec.msgpack.decode(path.read_bytes(), type=tuple[bytes, ...])
        claims = EvidenceClaims(
            measurement=self.measurement,
            report_data=report_data,
            platform_id=self._boot.platform_id,
            simulated=True,
            timestamp_ns=time.time_ns(),
            ta_name=self._boot.ta_name,
            ta_version=self._boot.ta_version,
        )
        return sign_evidence(claims, self._platform, chain)

    def _check_key_binding(self, report_data: bytes) -> None:
        """Refuse report data that binds a key the TA does not hold (see ``vouch_for``)."""
        wanted = report_data[: REPORT_DATA_BYTES // 2]
        if not any(hmac.compare_digest(key_digest(k), wanted) for k in self._table.held_keys()):
            raise AttestationError(
                AttestationFailure.KEY_BINDING,
                "report data binds a key the trusted application does not hold",
            )
