"""What travels between ``qflare node``, ``qflare server`` and ``qflare authority``.

Shared by all sides (none imports another). All frames are canonical msgpack.
"""

from __future__ import annotations

import hashlib
import hmac

import msgspec

from qflare.crypto.pq import (
    ED25519_PUBLIC_BYTES,
    MLDSA65_PUBLIC_BYTES,
    MLKEM768_PUBLIC_BYTES,
    SignatureScheme,
)
from qflare.protocol.chronos.messages import EpochConfig, Mode
from qflare.protocol.identity import (
    AuthorityKey,
    EndorsedKey,
    IdentityError,
    TokenClaims,
    decode_claims,
    verify_token,
)
from qflare.protocol.messages import PROTOCOL_VERSION, RoundConfig, decode_as, encode
from qflare.protocol.numbers import Finite

__all__ = [
    "ChronosJoin",
    "ChronosJoined",
    "ChronosRound",
    "ChronosPart",
    "ChronosSetup",
    "ChronosStep",
    "ChronosTask",
    "EnclaveTask",
    "EnrollRequest",
    "EnrollResponse",
    "EnrollmentRefusedError",
    "IssuedCertificate",
    "Notice",
    "SealedFrame",
    "SecAggStart",
    "SecAggStep",
    "SignedResult",
    "Task",
    "TaskBody",
    "check_device_keys",
    "check_token",
    "decode_as",
    "decode_notice",
    "result_transcript",
]

UPDATE_CONTEXT = b"qflare/wire/v1/update"


class EnrollRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/enroll`` (node -> server) and ``POST /v1/certificates`` (server -> authority).

    The node sends the signed half of its enrollment token and a proof that it holds the token's
    secret, computed over its own public keys (:func:`qflare.protocol.identity.enrollment_proof`).
    The secret itself never leaves the node, so whoever relays this request cannot turn it into
    an enrollment of other keys.

    Attributes:
        claims: The token's encoded :class:`~qflare.protocol.identity.TokenClaims`.
        signature: The authority's signature over ``claims``.
        proof: HMAC under the token secret over the claims, the scheme and both public keys.
        scheme: The device's identity signature scheme.
        identity_pk: The device's identity public key.
        kem_pk: The device's long-term hybrid KEM public key (ML-KEM-768 + X25519).
        version: Wire version.
    """

    version: int = PROTOCOL_VERSION
    claims: bytes
    signature: bytes
    proof: bytes
    scheme: str = "mldsa65"
    identity_pk: bytes
    kem_pk: bytes


class IssuedCertificate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The authority's answer to an :class:`EnrollRequest` (authority -> server).

    Attributes:
        device_id: The device id the authority assigned.
        client_index: The device's client index in protocol rounds.
        certificate: The signed device certificate.
        authority: The authority's encoded public key.
        version: Wire version.
    """

    version: int = PROTOCOL_VERSION
    device_id: str
    client_index: int
    certificate: bytes
    authority: bytes


class EnrollResponse(msgspec.Struct, frozen=True, kw_only=True):
    """What an enrolled node keeps: its id, its certificate, the keys it pins.

    Attributes:
        device_id: The device id.
        client_index: The device's client index in protocol rounds.
        certificate: The device certificate signed by the authority.
        authority: The authority's encoded public key (its fingerprint is in the token).
        server_public_key: The server's identity key (pinned for every handshake).
        server_scheme: Scheme of ``server_public_key``.
        version: Wire version.
    """

    version: int = PROTOCOL_VERSION
    device_id: str
    client_index: int
    certificate: bytes
    authority: bytes
    server_public_key: bytes
    server_scheme: str


class EnrollmentRefusedError(Exception):
    """An enrollment was refused, with the same status and code from the server or the authority.

    Args:
        status: HTTP status (401 unknown or forged token, 403 revoked, 409 used, 410 expired...).
        code: Stable machine-readable code (``token_used``, ``bad_proof``...).
        detail: Human-readable explanation.
    """

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.status, self.code, self.detail = status, code, detail


IDENTITY_PUBLIC_BYTES = {
    SignatureScheme.MLDSA65: MLDSA65_PUBLIC_BYTES,
    SignatureScheme.ED25519: ED25519_PUBLIC_BYTES,
    SignatureScheme.HYBRID: MLDSA65_PUBLIC_BYTES + ED25519_PUBLIC_BYTES,
}
KEM_PUBLIC_BYTES = MLKEM768_PUBLIC_BYTES + 32


def check_token(
    claims: bytes, signature: bytes, authority: AuthorityKey, now: float
) -> TokenClaims:
    """Check a token's signed claims against the pinned authority key and its expiry.

    The server runs this before it bothers the authority; the authority runs it again.

    Raises:
        EnrollmentRefusedError: 400 ``bad_token`` (malformed, non-finite expiry), 401
            ``wrong_authority`` (another authority's token), 401 ``token_forged`` (the signature
            does not verify), 410 ``token_expired``.
    """
    try:
        decoded = decode_claims(claims)
    except IdentityError as exc:
        raise EnrollmentRefusedError(400, "bad_token", str(exc)) from None
    if not hmac.compare_digest(decoded.authority, authority.fingerprint):
        raise EnrollmentRefusedError(
            401, "wrong_authority", "the token was issued by another enrollment authority"
        )
    try:
        verify_token(claims, signature, authority)
    except IdentityError:
        raise EnrollmentRefusedError(
            401, "token_forged", "the token's signature does not verify against the authority key"
        ) from None
    if not decoded.expires_at > now:
        raise EnrollmentRefusedError(410, "token_expired", "this enrollment token has expired")
    return decoded


def check_device_keys(scheme: str, identity_pk: bytes, kem_pk: bytes) -> None:
    """Check the shape of a device's public keys.

    Raises:
        EnrollmentRefusedError: 400 ``wrong_scheme``, ``bad_identity_key`` or ``bad_kem_key``.
    """
    try:
        known = SignatureScheme(scheme)
    except ValueError:
        raise EnrollmentRefusedError(
            400, "wrong_scheme", f"unknown signature scheme {scheme[:20]!r}"
        ) from None
    if len(identity_pk) != IDENTITY_PUBLIC_BYTES[known]:
        raise EnrollmentRefusedError(
            400, "bad_identity_key", "identity public key has the wrong length"
        )
    if len(kem_pk) != KEM_PUBLIC_BYTES:
        raise EnrollmentRefusedError(
            400, "bad_kem_key", "KEM public key must be ML-KEM-768 + X25519 (1216 bytes)"
        )


class SealedFrame(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An AEAD frame of an established session."""

    version: int = PROTOCOL_VERSION
    session_id: str
    seq: int
    ciphertext: bytes


class SecAggStart(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="secagg-start"
):
    """First task of a SecAgg round: what a node needs to train and to run its client machine.

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
    clip: Finite
    max_total_weight: int
    deadline: Finite


class ChronosJoin(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="join"
):
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


class ChronosSetup(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="setup"
):
    """Second task of an epoch: its parameters and the participants' endorsed keystore keys."""

    version: int = PROTOCOL_VERSION
    config: EpochConfig
    directory: dict[int, EndorsedKey]


class ChronosRound(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Sent with a CHRONOS ``RoundStart`` message: what the node trains from, how it quantises."""

    version: int = PROTOCOL_VERSION
    model_version: int
    weights: bytes
    clip: Finite
    max_total_weight: int
    deadline: Finite


class SecAggStep(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="secagg-step"
):
    """A later SecAgg step: the encoded server->client protocol message of the step.

    Attributes:
        message: An encoded :data:`~qflare.protocol.messages.ServerMessage`.
    """

    version: int = PROTOCOL_VERSION
    message: bytes


class ChronosStep(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="step"
):
    """A later CHRONOS step: an encoded server message (with the model at a round's start).

    Attributes:
        message: An encoded CHRONOS server message.
        round: Training input, with a round's ``RoundStart`` message only.
    """

    version: int = PROTOCOL_VERSION
    message: bytes
    round: ChronosRound | None = None


ChronosPart = ChronosJoin | ChronosSetup | ChronosStep
"""What one CHRONOS step asks: open a keystore, start the offline phase, or answer a message."""


class ChronosTask(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="chronos"
):
    """One CHRONOS step for a node.

    Attributes:
        epoch: The epoch.
        part: :class:`ChronosJoin` (step 0), :class:`ChronosSetup` (step 1) or
            :class:`ChronosStep` (later steps).
    """

    version: int = PROTOCOL_VERSION
    epoch: int
    part: ChronosPart


class EnclaveTask(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="enclave"
):
    """The one task of an enclave-aggregation round: train, attest the enclave, seal, answer.

    The node verifies ``evidence`` against the measurement it pinned before it seals its update
    to ``enclave_key``; its answer (step 0) is the encoded
    :class:`~qflare.protocol.enclave.SealedUpload`, or a signed ``declined`` notice.

    Attributes:
        session: The federation session (bound into the sealed upload).
        model_version: Version of ``weights``.
        weights: Current global model (flat float32, raw bytes).
        dim: Length of the update the enclave expects (the model's size).
        clip: Range ``[-clip, clip]`` the node clips each coordinate of its update to (as
            SecAgg's quantisation does).
        enclave_key: The aggregation enclave's hybrid KEM public key.
        evidence: Attestation evidence binding ``enclave_key`` and ``nonce``.
        nonce: The round's challenge, :func:`~qflare.protocol.enclave.round_nonce` of
            (``session``, round id): the node recomputes it, so evidence from another round
            is refused.
        deadline: Time by which the upload must arrive.
    """

    version: int = PROTOCOL_VERSION
    session: str
    model_version: int
    weights: bytes
    dim: int
    clip: Finite
    enclave_key: bytes
    evidence: bytes
    nonce: bytes
    deadline: Finite


TaskBody = SecAggStart | SecAggStep | ChronosTask | EnclaveTask
"""What a task asks of a node, tagged by protocol and step kind (a msgspec tagged union)."""


class Task(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One item a node pulls: the round and step it belongs to, and what the step asks.

    ``body`` is a tagged union; the node hands it to the participant registered for its type
    (:mod:`qflare.node.participant`). For CHRONOS ``step`` counts the epoch's steps and
    ``round_id`` is the round in progress (or the epoch's first round while offline).
    ``step_timeout_s`` announces the federation's step timeout: a node keeps its reconnection
    backoff well below it, so that a server restart does not cost it the step.
    """

    version: int = PROTOCOL_VERSION
    round_id: int
    step: int
    body: TaskBody
    step_timeout_s: Finite = 0.0


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
