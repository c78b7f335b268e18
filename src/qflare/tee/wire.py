"""The narrow command channel between the host and the simulated enclave process.

Every frame is one msgpack-encoded, frozen, versioned ``msgspec.Struct``. The enclave accepts
nothing but the request types below; TA parameters and results travel as opaque msgpack bytes
inside :class:`InvokeRequest` / :class:`BytesResponse` and are decoded against the TA manifest.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from qflare.crypto import SignatureScheme

WIRE_VERSION = 1


class Message(msgspec.Struct, frozen=True, kw_only=True, tag=True, forbid_unknown_fields=True):
    """Base of every frame; the class name is the msgpack tag."""

    version: int = WIRE_VERSION


class BootRequest(Message, frozen=True, kw_only=True):
    """First frame: which TA to load, where its state lives, and the platform identity."""

    state_dir: str
    ta_name: str
    ta_version: int
    ta_module: str
    measured_modules: tuple[str, ...]
    config: bytes
    platform_id: str
    platform_scheme: SignatureScheme


class EvidenceRequest(Message, frozen=True, kw_only=True):
    """Ask for attestation evidence over ``report_data``."""

    report_data: bytes


class InstallCertificateRequest(Message, frozen=True, kw_only=True):
    """Store the platform certificate issued by the (simulated) manufacturer."""

    certificate: bytes


class SealRequest(Message, frozen=True, kw_only=True):
    """Seal host data under ``label``."""

    data: bytes
    label: str


class UnsealRequest(Message, frozen=True, kw_only=True):
    """Unseal a host blob sealed under ``label``."""

    blob: bytes
    label: str


class CounterReadRequest(Message, frozen=True, kw_only=True):
    """Read a named monotonic counter."""

    name: str


class CounterAdvanceRequest(Message, frozen=True, kw_only=True):
    """Advance a named monotonic counter."""

    name: str
    to_value: int


class InvokeRequest(Message, frozen=True, kw_only=True):
    """Run a TA command; ``params`` is the msgpack encoding of its parameter struct."""

    command_id: int
    params: bytes


class ShutdownRequest(Message, frozen=True, kw_only=True):
    """Ask the enclave process to exit."""


Request = (
    BootRequest
    | EvidenceRequest
    | InstallCertificateRequest
    | SealRequest
    | UnsealRequest
    | CounterReadRequest
    | CounterAdvanceRequest
    | InvokeRequest
    | ShutdownRequest
)


class BootResponse(Message, frozen=True, kw_only=True):
    """The enclave is up: its measurement and the platform's public attestation key."""

    measurement: bytes
    platform_id: str
    platform_scheme: SignatureScheme
    platform_public_key: bytes
    provisioned: bool


class BytesResponse(Message, frozen=True, kw_only=True):
    """Evidence, a sealed blob, unsealed host data, or an encoded TA result."""

    value: bytes


class CounterResponse(Message, frozen=True, kw_only=True):
    """A counter value."""

    value: int


class OkResponse(Message, frozen=True, kw_only=True):
    """Done, nothing to return."""


class FailureResponse(Message, frozen=True, kw_only=True):
    """The request failed; ``kind`` names a :mod:`qflare.tee.errors` class."""

    kind: str
    message: str
    reason: str = ""


Response = BootResponse | BytesResponse | CounterResponse | OkResponse | FailureResponse

_M = TypeVar("_M", bound=Message)
_REQUESTS: msgspec.msgpack.Decoder[Request] = msgspec.msgpack.Decoder(Request)
_RESPONSES: msgspec.msgpack.Decoder[Response] = msgspec.msgpack.Decoder(Response)


def encode(message: Message) -> bytes:
    """Encode one frame."""
    return msgspec.msgpack.encode(message)


def decode_request(frame: bytes) -> Request:
    """Decode a host-to-enclave frame (raises ``msgspec.MsgspecError`` or ``ValueError``)."""
    return _check(_REQUESTS.decode(frame))


def decode_response(frame: bytes) -> Response:
    """Decode an enclave-to-host frame (raises ``msgspec.MsgspecError`` or ``ValueError``)."""
    return _check(_RESPONSES.decode(frame))


def _check(message: _M) -> _M:
    if message.version != WIRE_VERSION:
        raise ValueError(f"wire version {message.version} is not {WIRE_VERSION}")
    return message
