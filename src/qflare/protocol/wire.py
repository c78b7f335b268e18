"""What travels between ``qflare node`` and ``qflare server`` around the protocol messages.

Shared by both sides (neither imports the other). All frames are canonical msgpack.
"""

from __future__ import annotations

import hashlib

import msgspec

from qflare.protocol.chronos.messages import EpochConfig, Mode
from qflare.protocol.identity import EndorsedKey
from qflare.protocol.messages import PROTOCOL_VERSION, RoundConfig, decode_as, encode

__all__ = [
    "ChronosJoin",
    "ChronosJoined",
    "ChronosRound",
    "ChronosSetup",
    "ChronosTask",
    "EnrollRequest",
    "EnrollResponse",
    "Notice",
    "RoundStart",
    "SealedFrame",
    "SignedResult",
    "Task",
    "decode_as",
    "decode_notice",
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
        certificates: Device certificates of the participants (by client index), issued by the
            enrollment authority; the node checks each against the authority key it pinned.
        model_version: Version of ``weights``.
        weights: Current global model (flat float32, raw bytes).
        clip: Quantisation clipping range.
        max_total_weight: Quantisation headroom bound.
        deadline: Time by which each step must be answered.
    """

    version: int = PROTOCOL_VERSION
    config: RoundConfig
    client_index: int
    certificates: dict[int, bytes]
    model_version: int
    weights: bytes
    clip: float
    max_total_weight: int
    deadline: float


class ChronosJoin(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """First task of a CHRONOS epoch: open a keystore, answer with :class:`ChronosJoined`.

    Attributes:
        client_index: The node's id inside the epoch.
        mode: ``chronos`` or ``chronos-dm``.
        signature_scheme: Identity scheme of the epoch keys' signatures.
        session: The federation session (bound into keystore-key endorsements).
        nonce: A fresh 32-byte challenge the keystore's attestation evidence must answer.
    """

    version: int = PROTOCOL_VERSION
    client_index: int
    mode: Mode
    signature_scheme: str
    session: str = "qflare"
    nonce: bytes = b""


class ChronosJoined(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A node's answer to :class:`ChronosJoin`: the key its keystore signs with, vouched for.

    ``endorsement`` chains authority -> device certificate -> keystore key, for the peers'
    keystores to check; ``evidence`` is the enclave's attestation binding that key to the
    trusted application's measurement and the join's nonce, for the server to check before it
    admits the device to the epoch.
    """

    version: int = PROTOCOL_VERSION
    identity_pk: bytes
    enclave: bool = False
    endorsement: EndorsedKey | None = None
    evidence: bytes = b""


class ChronosSetup(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Second task of an epoch: its parameters and the participants' endorsed keystore keys."""

    version: int = PROTOCOL_VERSION
    config: EpochConfig
    directory: dict[int, EndorsedKey]


class ChronosRound(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Sent with a round's ``RoundStart``: what the node trains from and how it quantises."""

    version: int = PROTOCOL_VERSION
    model_version: int
    weights: bytes
    clip: float
    max_total_weight: int
    deadline: float


class ChronosTask(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One CHRONOS step for a node: exactly one of ``join``, ``setup`` or ``message`` is set.

    Attributes:
        epoch: The epoch.
        join: Open a keystore (step 0).
        setup: Start the offline phase (step 1).
        message: An encoded CHRONOS server message (later steps).
        round: Training input, with a round's ``RoundStart`` message only.
    """

    version: int = PROTOCOL_VERSION
    epoch: int
    join: ChronosJoin | None = None
    setup: ChronosSetup | None = None
    message: bytes | None = None
    round: ChronosRound | None = None


class Task(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """One item a node pulls: a round start or an encoded server->client protocol message.

    SecAgg tasks set ``start`` or ``message``; CHRONOS tasks set ``chronos`` (then ``step``
    counts the epoch's steps and ``round_id`` is the round in progress, or the epoch's first
    round while offline). Unset fields are not encoded, so SecAgg tasks decode on older nodes.
    """

    version: int = PROTOCOL_VERSION
    round_id: int
    step: int
    start: RoundStart | None = None
    message: bytes | None = None
    chronos: ChronosTask | None = None


class Notice(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="notice"):
    """Sent instead of a protocol message: the node declines the step, or leaves for good.

    It travels inside a :class:`SignedResult` (so the device's identity vouches for it). The
    server records it for the operator (``qflare device list``) and stops waiting for the node.

    Attributes:
        kind: ``declined`` (this round: e.g. its parameters break the node's policy) or
            ``leaving`` (the node stops; do not sample it until it polls again).
        reason: Machine-readable reason (an abort reason or ``shutdown``).
        detail: Human-readable explanation (never secrets).
    """

    version: int = PROTOCOL_VERSION
    kind: str
    reason: str
    detail: str = ""


NOTICE_KINDS = frozenset({"declined", "leaving"})


def decode_notice(message: bytes) -> Notice | None:
    """The :class:`Notice` in a result's message, or ``None`` if it carries a protocol message."""
    try:
        notice = msgspec.msgpack.decode(message, type=Notice)
    except msgspec.MsgspecError:
        return None
    if notice.kind not in NOTICE_KINDS or len(notice.reason) > 64 or len(notice.detail) > 500:
        return None
    return notice


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
