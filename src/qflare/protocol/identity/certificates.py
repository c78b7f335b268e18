"""Device certificates: the enrollment authority's statement "client *i* is this device's key"."""

from __future__ import annotations

import hashlib
import hmac
import math
from typing import Final

import msgspec

from qflare.crypto import CryptoError, SignatureScheme, Signer, verify_signature
from qflare.protocol.numbers import Finite

__all__ = [
    "CERT_CONTEXT",
    "AuthorityKey",
    "CertificateBody",
    "IdentityError",
    "certificate_digest",
    "decode_authority_key",
    "encode_authority_key",
    "issue_certificate",
    "parse_certificate",
    "verify_certificate",
]

CERT_CONTEXT: Final = b"qflare/authority/v1/device-certificate"
_KEY_DOMAIN: Final = b"qflare/authority/v1/key"
_VERSION: Final = 1
_ENCODER: Final = msgspec.msgpack.Encoder()


class IdentityError(ValueError):
    """A certificate, token or endorsement is malformed, forged or does not fit its use."""


class AuthorityKey(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The enrollment authority's public key: the trust anchor every node pins.

    Attributes:
        scheme: Signature scheme (ML-DSA-65).
        public_key: The authority's public key.
        version: Format version.
    """

    scheme: SignatureScheme = SignatureScheme.MLDSA65
    public_key: bytes
    version: int = _VERSION

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 over the encoded key (what tokens and certificates name)."""
        return hashlib.sha256(_KEY_DOMAIN + _ENCODER.encode(self)).digest()


def encode_authority_key(key: AuthorityKey) -> bytes:
    """Canonical encoding of an authority key (the ``authority.pub`` file)."""
    return _ENCODER.encode(key)


def decode_authority_key(data: bytes) -> AuthorityKey:
    """Decode :func:`encode_authority_key` output.

    Raises:
        IdentityError: malformed input.
    """
    try:
        key = msgspec.msgpack.decode(data, type=AuthorityKey)
    except (msgspec.MsgspecError, ValueError):
        raise IdentityError("authority key does not decode") from None
    if key.version != _VERSION or not key.public_key:
        raise IdentityError("unsupported authority key")
    return key


class CertificateBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the authority vouches for: one device of one federation.

    Attributes:
        authority: Fingerprint of the issuing authority key.
        serial: Issue number (unique per authority).
        device_id: Device id used on the wire.
        client_index: The device's id inside protocol rounds.
        scheme: The device's identity signature scheme.
        identity_pk: The device's identity public key (signs protocol messages).
        kem_pk: The device's long-term hybrid KEM public key (sessions).
        issued_at: Issue time, Unix seconds.
        version: Format version.
    """

    authority: bytes
    serial: int
    device_id: str
    client_index: int
    scheme: SignatureScheme
    identity_pk: bytes
    kem_pk: bytes
    issued_at: Finite
    version: int = _VERSION


class _Signed(msgspec.Struct, frozen=True, array_like=True):
    body: bytes
    signature: bytes


def issue_certificate(signer: Signer, body: CertificateBody) -> bytes:
    """Sign ``body`` with the authority key and return the encoded certificate."""
    encoded = _ENCODER.encode(body)
    return _ENCODER.encode(_Signed(encoded, signer.sign(encoded, context=CERT_CONTEXT)))


def _decode_signed(data: bytes, what: str) -> _Signed:
    try:
        return msgspec.msgpack.decode(data, type=_Signed)
    except (msgspec.MsgspecError, ValueError):
        raise IdentityError(f"{what} does not decode") from None


def parse_certificate(data: bytes) -> CertificateBody:
    """Decode a certificate **without** checking its signature (for display and indexing).

    Raises:
        IdentityError: malformed certificate.
    """
    signed = _decode_signed(data, "certificate")
    try:
        body = msgspec.msgpack.decode(signed.body, type=CertificateBody)
    except (msgspec.MsgspecError, ValueError):
        raise IdentityError("certificate body does not decode") from None
    if body.version != _VERSION:
        raise IdentityError(f"unsupported certificate version {body.version}")
    if body.client_index < 0 or not math.isfinite(body.issued_at):
        raise IdentityError("certificate has a negative index or a non-finite time")
    return body


def verify_certificate(data: bytes, authority: AuthorityKey) -> CertificateBody:
    """Check that ``authority`` issued the certificate ``data``; return its body.

    Raises:
        IdentityError: malformed, issued by another authority, or forged.
    """
    body = parse_certificate(data)
    if not hmac.compare_digest(body.authority, authority.fingerprint):
        raise IdentityError("certificate was issued by another authority")
    signed = _decode_signed(data, "certificate")
    try:
        verify_signature(
            authority.scheme,
            authority.public_key,
            signed.signature,
            signed.body,
            context=CERT_CONTEXT,
        )
    except CryptoError:
        raise IdentityError("certificate signature does not verify") from None
    return body


def certificate_digest(data: bytes) -> bytes:
    """SHA-256 of an encoded certificate (cache key and ledger reference)."""
    return hashlib.sha256(data).digest()
