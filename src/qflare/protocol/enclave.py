"""Uploads to an attested aggregation enclave (sans-IO).

A node encrypts its update to the enclave's hybrid KEM public key (ML-KEM-768 + X25519, see
:class:`qflare.crypto.HybridKem`) and signs it with its identity key; only code inside the
enclave can open it. One :class:`SealedUpload` is:

* ``kem_ciphertext``: a fresh encapsulation to the enclave key (one per upload, so each AEAD key
  is used once and the nonce is the fixed sequence number 0);
* ``ciphertext``: AES-256-GCM over ``weight (float64 LE) || update (float32 LE)``, with the key
  derived from the KEM secret and the associated data binding (session, round id, device id,
  enclave key id), so it opens under no other context;
* ``signature``: the device's identity signature over (session, round id, device id, enclave key
  id, SHA-256 of both ciphertexts), so nobody but the device can make or alter one.

:func:`open_update` (run inside the enclave) checks in this order, cheapest first, and refuses
with one named :class:`ExclusionReason`: format, session, round, enclave key, known device,
signature, length, decryption, weight, and finally that every value is a real number. It never
raises anything but :class:`UploadRefused`.
"""

from __future__ import annotations

import enum
import hashlib
import math
from dataclasses import dataclass
from typing import Final, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from qflare.crypto import (
    Aead,
    CryptoError,
    HybridKem,
    Label,
    Rng,
    SecretBytes,
    SignatureScheme,
    Signer,
    hkdf,
    verify_signature,
)

__all__ = [
    "UPLOAD_CONTEXT",
    "Decapsulator",
    "DeviceKey",
    "ExclusionReason",
    "OpenedUpdate",
    "RoundContext",
    "SealedUpload",
    "UploadRefused",
    "decode_upload",
    "enclave_key_id",
    "encode_upload",
    "open_update",
    "round_nonce",
    "seal_update",
    "upload_transcript",
]

UPLOAD_CONTEXT: Final = b"qflare/enclave/v1/upload"
_KEY_DOMAIN: Final = b"qflare/enclave/v1/key"
_VERSION: Final = 1
_WEIGHT_BYTES: Final = 8
_TAG_BYTES: Final = 16
_FLOAT32: Final = np.dtype("<f4")


class ExclusionReason(enum.StrEnum):
    """Why the enclave left an upload out of the round (the round goes on without it)."""

    MALFORMED = "malformed"
    WRONG_SESSION = "wrong-session"
    WRONG_ROUND = "wrong-round"
    WRONG_KEY = "wrong-enclave-key"
    UNKNOWN_DEVICE = "unknown-device"
    REPLAY = "replay"
    BAD_SIGNATURE = "bad-signature"
    WRONG_LENGTH = "wrong-length"
    UNDECRYPTABLE = "undecryptable"
    BAD_WEIGHT = "bad-weight"
    NOT_A_NUMBER = "not-a-number"
    INFINITE = "infinite"


class UploadRefused(ValueError):  # noqa: N818 - reads as the event it reports
    """An upload was refused; ``reason`` says why (the message never holds update values).

    Args:
        reason: The named cause.
        message: Human-readable detail.
    """

    def __init__(self, reason: ExclusionReason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason


class SealedUpload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One device's encrypted, signed update for one round (what travels to the enclave).

    Attributes:
        session: Federation session the round belongs to.
        round_id: The round.
        device_id: The sending device (as its certificate names it).
        enclave_key: :func:`enclave_key_id` of the enclave key it is encrypted to.
        kem_ciphertext: Hybrid KEM encapsulation to that key.
        ciphertext: AES-256-GCM of ``weight || update``.
        signature: The device's identity signature over :func:`upload_transcript`.
        version: Format version.
    """

    session: str
    round_id: int
    device_id: str
    enclave_key: bytes
    kem_ciphertext: bytes
    ciphertext: bytes
    signature: bytes
    version: int = _VERSION


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """A device's certified identity key (from a certificate checked inside the enclave)."""

    scheme: SignatureScheme
    public_key: bytes


@dataclass(frozen=True, slots=True)
class RoundContext:
    """What the enclave expects of every upload in the current round.

    Attributes:
        session: The federation session.
        round_id: The round being collected.
        dim: Update length (float32 values).
        max_weight: Largest accepted weight (examples trained on).
    """

    session: str
    round_id: int
    dim: int
    max_weight: float


@dataclass(frozen=True, slots=True)
class OpenedUpdate:
    """A valid update, opened inside the enclave.

    Attributes:
        device_id: Who sent it.
        weight: Its weight (finite, positive, at most the round's ``max_weight``).
        vector: ``dim`` finite float32 values (a read-only view of the plaintext).
    """

    device_id: str
    weight: float
    vector: npt.NDArray[np.float32]

    def __repr__(self) -> str:
        return f"OpenedUpdate(device_id={self.device_id!r}, <redacted {self.vector.size} values>)"


class Decapsulator(Protocol):
    """The enclave's KEM key (:class:`qflare.crypto.HybridKem` inside the enclave)."""

    @property
    def public_key(self) -> bytes:
        """The encapsulation key."""
        ...

    def decapsulate(self, ciphertext: bytes) -> SecretBytes:
        """Recover the shared secret of ``ciphertext``."""
        ...


def round_nonce(session: str, round_id: int) -> bytes:
    """The 32-byte attestation challenge of round ``round_id``: nobody picks it.

    A served round's evidence answers this nonce, and a node recomputes it, so evidence made for
    another round (or session) is refused. Round ids are never reused (the enclave's counter
    refuses an old one), which makes the nonce fresh; the evidence timestamp bounds its age.
    """
    return hashlib.sha256(
        msgspec.msgpack.encode(("round-nonce", _VERSION, session, round_id))
    ).digest()


def enclave_key_id(public_key: bytes) -> bytes:
    """``SHA-256(domain || public_key)``: names the enclave key an upload is encrypted to."""
    return hashlib.sha256(_KEY_DOMAIN + public_key).digest()


def _aad(session: str, round_id: int, device_id: str, key_id: bytes) -> bytes:
    return msgspec.msgpack.encode(("aad", _VERSION, session, round_id, device_id, key_id))


def _aead(secret: SecretBytes, session: str, round_id: int, device_id: str, key_id: bytes) -> Aead:
    """The upload's AES-256-GCM key: used once (each upload has its own KEM secret)."""
    extra = key_id + device_id.encode()  # key_id has a fixed length: unambiguous
    return Aead(
        hkdf(secret, Label("enclave/upload", session=session, round_id=round_id, extra=extra))
    )


def upload_transcript(
    session: str, round_id: int, device_id: str, key_id: bytes, kem_ct: bytes, ct: bytes
) -> bytes:
    """What the device signs: the context and a hash of both ciphertexts."""
    digest = hashlib.sha256(len(kem_ct).to_bytes(8, "big") + kem_ct + ct).digest()
    return msgspec.msgpack.encode(("sig", _VERSION, session, round_id, device_id, key_id, digest))


def seal_update(
    vector: npt.NDArray[np.floating],
    *,
    weight: float,
    session: str,
    round_id: int,
    device_id: str,
    enclave_public_key: bytes,
    signer: Signer,
    rng: Rng,
) -> SealedUpload:
    """Encrypt ``vector`` (as float32) to the enclave key and sign it with ``signer``.

    The caller must have verified the enclave's evidence for ``enclave_public_key`` first
    (:mod:`qflare.node.enclave_upload` does).

    Raises:
        ValueError: ``vector`` is not one-dimensional, or ``weight`` is not a positive number.
        qflare.crypto.KeyFormatError: ``enclave_public_key`` is malformed.
    """
    values = np.ascontiguousarray(vector, dtype=_FLOAT32)
    if values.ndim != 1:
        raise ValueError("an update is a one-dimensional vector")
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError("weight must be a positive number")
    key_id = enclave_key_id(enclave_public_key)
    secret, kem_ct = HybridKem.encapsulate(enclave_public_key, rng)
    aead = _aead(secret, session, round_id, device_id, key_id)
    plaintext = np.float64(weight).astype("<f8").tobytes() + values.tobytes()
    ct = aead.seal(plaintext, aad=_aad(session, round_id, device_id, key_id), sequence=0)
    transcript = upload_transcript(session, round_id, device_id, key_id, kem_ct, ct)
    return SealedUpload(
        session=session,
        round_id=round_id,
        device_id=device_id,
        enclave_key=key_id,
        kem_ciphertext=kem_ct,
        ciphertext=ct,
        signature=signer.sign(transcript, context=UPLOAD_CONTEXT),
    )


def encode_upload(upload: SealedUpload) -> bytes:
    """The msgpack encoding of ``upload`` (what travels to the enclave)."""
    return msgspec.msgpack.encode(upload)


def decode_upload(data: bytes) -> SealedUpload:
    """Decode an encoded :class:`SealedUpload`.

    Raises:
        UploadRefused: ``MALFORMED``.
    """
    try:
        upload = msgspec.msgpack.decode(data, type=SealedUpload)
    except (msgspec.MsgspecError, ValueError):  # ValueError: invalid UTF-8
        raise UploadRefused(ExclusionReason.MALFORMED, "upload does not decode") from None
    if upload.version != _VERSION:
        raise UploadRefused(ExclusionReason.MALFORMED, f"unsupported version {upload.version}")
    return upload


def _check_context(upload: SealedUpload, ctx: RoundContext, key_id: bytes) -> None:
    if upload.session != ctx.session:
        raise UploadRefused(ExclusionReason.WRONG_SESSION, "upload is for another session")
    if upload.round_id != ctx.round_id:
        raise UploadRefused(
            ExclusionReason.WRONG_ROUND,
            f"upload is for round {upload.round_id}, not {ctx.round_id}",
        )
    if upload.enclave_key != key_id:
        raise UploadRefused(ExclusionReason.WRONG_KEY, "upload is encrypted to another key")


def _check_signature(upload: SealedUpload, device: DeviceKey) -> None:
    transcript = upload_transcript(
        upload.session,
        upload.round_id,
        upload.device_id,
        upload.enclave_key,
        upload.kem_ciphertext,
        upload.ciphertext,
    )
    try:
        verify_signature(
            device.scheme, device.public_key, upload.signature, transcript, context=UPLOAD_CONTEXT
        )
    except CryptoError:
        raise UploadRefused(ExclusionReason.BAD_SIGNATURE, "signature does not verify") from None


def _decrypt(upload: SealedUpload, kem: Decapsulator) -> bytes:
    try:
        secret = kem.decapsulate(upload.kem_ciphertext)
        aead = _aead(secret, upload.session, upload.round_id, upload.device_id, upload.enclave_key)
        aad = _aad(upload.session, upload.round_id, upload.device_id, upload.enclave_key)
        return aead.open(upload.ciphertext, aad=aad, sequence=0)
    except CryptoError:
        raise UploadRefused(ExclusionReason.UNDECRYPTABLE, "upload does not decrypt") from None


def _decode_plaintext(plaintext: bytes, ctx: RoundContext) -> tuple[float, npt.NDArray[np.float32]]:
    weight = float(np.frombuffer(plaintext, dtype="<f8", count=1)[0])
    if not (math.isfinite(weight) and 0 < weight <= ctx.max_weight):
        raise UploadRefused(ExclusionReason.BAD_WEIGHT, "weight is not in (0, max_weight]")
    vector = np.frombuffer(plaintext, dtype=_FLOAT32, offset=_WEIGHT_BYTES)
    if not np.isfinite(vector).all():
        if np.isnan(vector).any():
            raise UploadRefused(ExclusionReason.NOT_A_NUMBER, "update holds NaN")
        raise UploadRefused(ExclusionReason.INFINITE, "update holds an infinity")
    return weight, vector


def open_update(
    upload: SealedUpload,
    *,
    ctx: RoundContext,
    kem: Decapsulator,
    devices: dict[str, DeviceKey],
) -> OpenedUpdate:
    """Check, verify and decrypt ``upload`` inside the enclave.

    Args:
        upload: The decoded upload.
        ctx: The round it must belong to.
        kem: The enclave's KEM key.
        devices: Certified identity keys of the round's devices, by device id.

    Raises:
        UploadRefused: with the first failed check as ``reason`` (never another exception).
    """
    _check_context(upload, ctx, enclave_key_id(kem.public_key))
    device = devices.get(upload.device_id)
    if device is None:
        raise UploadRefused(ExclusionReason.UNKNOWN_DEVICE, "device is not in this round")
    _check_signature(upload, device)
    expected = _WEIGHT_BYTES + 4 * ctx.dim + _TAG_BYTES
    if len(upload.ciphertext) != expected:
        raise UploadRefused(ExclusionReason.WRONG_LENGTH, f"update is not {ctx.dim} float32 values")
    weight, vector = _decode_plaintext(_decrypt(upload, kem), ctx)
    return OpenedUpdate(device_id=upload.device_id, weight=weight, vector=vector)
