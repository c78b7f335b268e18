"""What travels between ``qflare node`` and ``qflare server`` around the protocol messages.

Shared by both sides (neither imports the other). All frames are canonical msgpack.
"""

from __future__ import annotations

import hashlib

import msgspec

from qflare.protocol.messages import PROTOCOL_VERSION, RoundConfig, decode_as, encode

__all__ = [
    "EnrollRequest",
    "EnrollResponse",
    "RoundStart",
    "SealedFrame",
    "SignedResult",
    "Task",
    "decode_as",
    "result_transcript",
]

UPDATE_CONTEXT = b"qflare/wire/v1/update"


class EnrollRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/enroll``: a one-time token and the device's public keys."""

    version: int = PROTOCOL_VERSION
    token: str
    identity_pk: bytes
    kem_pk: bytes
    scheme: str = "mldsa65"


class EnrollResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The device's id and the server's identity key (to pin)."""

    version: int = PROTOCOL_VERSION
    device_id: str
    server_public_key: bytes
    server_scheme: str


class SealedFrame(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An AEAD frame of an established session."""

    version: int = PROTOCOL_VERSION
    session_id: str
    seq: int
    ciphertext: bytes


class RoundStart(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """First task of a round: everything a node needs to train and to run its client machine.

    Attributes:
        config: Public round parameters.
        client_index: The node's id inside the round.
        identities: Identity public keys of all participants (by client index).
        model_version: Version of ``weights``.
        weights: Current global model (flat float32, raw bytes).
        clip: Quantisation clipping range.
        max_total_weight: Quantisation headroom bound.
        deadline: Time by which each step must be answered.
    """

    version: int = PROTOCOL_VERSION
    config: RoundConfig
    client_index: int
    identities: dict[int, bytes]
    model_version: int
    weights: bytes
    clip: float
    max_total_weight: int
    deadline: float


class Task(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One item a node pulls: a round start or an encoded server->client protocol message."""

    version: int = PROTOCOL_VERSION
    round_id: int
    step: int
    start: RoundStart | None = None
    message: bytes | None = None


class SignedResult(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A node's protocol message, signed over (payload hash, round, device) with its identity key."""

    version: int = PROTOCOL_VERSION
    device_id: str
    round_id: int
    step: int
    message: bytes
    signature: bytes


def result_transcript(device_id: str, round_id: int, step: int, message: bytes) -> bytes:
    """Bytes signed by a node for a result: binds the payload hash to round, step and device."""
    return encode((device_id, round_id, step, hashlib.sha256(message).digest()))
