"""Sealed blobs: AES-256-GCM under a key derived from the HUK and the enclave measurement.

``sealing key = HKDF(HUK, "tee/seal" || measurement)``; each blob uses its own key
``HKDF(sealing key, "tee/seal/blob" || salt)`` with a fresh 16-byte salt, so no (key, nonce)
pair ever repeats even if a counter were reused. The header -- owner, label, measurement and the
counter value at sealing time -- is the AEAD's associated data: it is readable by the host but
any change to it fails authentication.

These are pure functions; the counter comparison that turns an old blob into
:class:`~qflare.tee.errors.RollbackDetected` lives in :mod:`qflare.tee.runtime`.
"""

from __future__ import annotations

import enum

import msgspec

from qflare.crypto import Aead, DecryptionError, Label, SecretBytes, hkdf
from qflare.tee.errors import UnsealError

SEAL_SALT_BYTES = 16
_VERSION = 1


class SealOwner(enum.StrEnum):
    """Who may unseal a blob: the host through ``Enclave.unseal``, or only the TA."""

    HOST = "host"
    TA = "ta"


class SealedHeader(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Authenticated, unencrypted metadata of a sealed blob.

    Attributes:
        version: Format version.
        owner: Who may unseal it.
        label: Caller-chosen label; one counter per (owner, label).
        measurement: Measurement of the enclave that sealed it.
        counter: Seal counter of (owner, label) at sealing time.
        salt: Per-blob key-derivation salt.
    """

    owner: SealOwner
    label: str
    measurement: bytes
    counter: int
    salt: bytes
    version: int = _VERSION


class _SealedBlob(msgspec.Struct, frozen=True, array_like=True):
    header: bytes
    ciphertext: bytes


def _blob_key(huk: SecretBytes, measurement: bytes, salt: bytes) -> Aead:
    sealing_key = hkdf(huk, Label("tee/seal", extra=measurement))
    return Aead(hkdf(sealing_key, Label("tee/seal/blob", extra=salt)))


def seal_blob(huk: SecretBytes, header: SealedHeader, data: bytes | SecretBytes) -> bytes:
    """Encrypt ``data`` under ``header`` (which must carry a fresh salt)."""
    if len(header.salt) != SEAL_SALT_BYTES:
        raise ValueError("sealing salt must be 16 bytes")
    raw = data.reveal() if isinstance(data, SecretBytes) else data
    encoded = msgspec.msgpack.encode(header)
    ciphertext = _blob_key(huk, header.measurement, header.salt).seal(raw, aad=encoded, sequence=0)
    return msgspec.msgpack.encode(_SealedBlob(header=encoded, ciphertext=ciphertext))


def read_header(blob: bytes) -> SealedHeader:
    """Parse a blob's header *without* authenticating it (for inspection only).

    Raises:
        UnsealError: the blob is malformed.
    """
    try:
        outer = msgspec.msgpack.decode(blob, type=_SealedBlob)
        header = msgspec.msgpack.decode(outer.header, type=SealedHeader)
    except (msgspec.MsgspecError, ValueError):  # ValueError: invalid UTF-8
        raise UnsealError("sealed blob is malformed") from None
    if header.version != _VERSION:
        raise UnsealError(f"sealed blob version {header.version} is unsupported")
    return header


def open_blob(
    huk: SecretBytes, blob: bytes, *, measurement: bytes, owner: SealOwner, label: str
) -> tuple[SealedHeader, SecretBytes]:
    """Authenticate and decrypt ``blob``; return its header and plaintext.

    Raises:
        UnsealError: malformed, tampered, or bound to another measurement, owner or label.
    """
    header = read_header(blob)
    if header.measurement != measurement:
        raise UnsealError("sealed blob belongs to another enclave measurement")
    if header.owner is not owner:
        raise UnsealError(f"sealed blob belongs to the {header.owner.value}, not the {owner.value}")
    if header.label != label:
        raise UnsealError(f"sealed blob has label {header.label!r}, not {label!r}")
    outer = msgspec.msgpack.decode(blob, type=_SealedBlob)
    try:
        plain = _blob_key(huk, measurement, header.salt).open(
            outer.ciphertext, aad=outer.header, sequence=0
        )
    except DecryptionError:
        raise UnsealError("sealed blob failed authentication (tampered or foreign)") from None
    return header, SecretBytes(plain)
