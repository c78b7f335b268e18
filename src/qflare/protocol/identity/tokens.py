"""Single-use enrollment tokens: signed claims plus a secret only the holder and authority know.

The secret never leaves the device: it keys :func:`enrollment_proof`, which binds the device's
own public keys to the token, so whoever relays the enrollment cannot enroll other keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
from typing import Final

import msgspec

from qflare.crypto import CryptoError, Signer, verify_signature
from qflare.protocol.identity.certificates import AuthorityKey, IdentityError
from qflare.protocol.numbers import Finite

__all__ = [
    "MAX_TOKEN_CHARS",
    "TOKEN_CONTEXT",
    "TOKEN_PREFIX",
    "SignedToken",
    "TokenClaims",
    "decode_claims",
    "enrollment_proof",
    "issue_token",
    "parse_token",
    "verify_token",
]

TOKEN_CONTEXT: Final = b"qflare/authority/v1/enrollment-token"
TOKEN_PREFIX: Final = "qft1."  # noqa: S105 - a format prefix, not a password
MAX_TOKEN_CHARS: Final = 8192
_PROOF_DOMAIN: Final = b"qflare/authority/v1/enrollment-proof"
_VERSION: Final = 1
_ENCODER: Final = msgspec.msgpack.Encoder()


class TokenClaims(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The signed part of an enrollment token.

    Attributes:
        token_id: Unique id (hex); the authority accepts it once.
        authority: Fingerprint of the issuing authority key (the node pins that key).
        label: Operator's note.
        expires_at: Unix seconds after which the token is refused.
        version: Format version.
    """

    token_id: str
    authority: bytes
    label: str = ""
    expires_at: Finite
    version: int = _VERSION


class SignedToken(msgspec.Struct, frozen=True, array_like=True):
    """An enrollment token as handed to a device.

    ``secret`` never leaves the device: it keys :func:`enrollment_proof`, which binds the device's
    own public keys to the token, so whoever relays the enrollment cannot enroll other keys.
    """

    claims: bytes
    signature: bytes
    secret: bytes


def issue_token(signer: Signer, claims: TokenClaims, secret: bytes) -> str:
    """Sign ``claims`` and return the token text (``qft1.`` + base64url)."""
    encoded = _ENCODER.encode(claims)
    token = SignedToken(encoded, signer.sign(encoded, context=TOKEN_CONTEXT), secret)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(_ENCODER.encode(token)).decode().rstrip("=")


def parse_token(text: str) -> SignedToken:
    """Decode token text (the signature is not checked here).

    Raises:
        IdentityError: not a QFLARE enrollment token.
    """
    text = text.strip()
    if not text.startswith(TOKEN_PREFIX) or len(text) > MAX_TOKEN_CHARS:
        raise IdentityError(f"an enrollment token starts with {TOKEN_PREFIX!r}")
    raw = text[len(TOKEN_PREFIX) :]
    try:
        data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        token = msgspec.msgpack.decode(data, type=SignedToken)
    except (binascii.Error, ValueError, msgspec.MsgspecError):
        raise IdentityError("enrollment token does not decode") from None
    if len(token.secret) != 32:
        raise IdentityError("enrollment token secret must be 32 bytes")
    return token


def decode_claims(claims: bytes) -> TokenClaims:
    """Decode token claims (the signature is not checked here).

    Raises:
        IdentityError: malformed claims, or a non-finite expiry.
    """
    try:
        decoded = msgspec.msgpack.decode(claims, type=TokenClaims)
    except (msgspec.MsgspecError, ValueError):
        raise IdentityError("token claims do not decode") from None
    if decoded.version != _VERSION or not math.isfinite(decoded.expires_at):
        raise IdentityError("unsupported token claims or non-finite expiry")
    if not decoded.token_id or len(decoded.token_id) > 64 or len(decoded.label) > 200:
        raise IdentityError("token id or label has a bad length")
    return decoded


def verify_token(claims: bytes, signature: bytes, authority: AuthorityKey) -> TokenClaims:
    """Check that ``authority`` signed ``claims``; return them (expiry is the caller's check).

    Raises:
        IdentityError: malformed, another authority's, or forged.
    """
    decoded = decode_claims(claims)
    if not hmac.compare_digest(decoded.authority, authority.fingerprint):
        raise IdentityError("token was issued by another authority")
    try:
        verify_signature(
            authority.scheme, authority.public_key, signature, claims, context=TOKEN_CONTEXT
        )
    except CryptoError:
        raise IdentityError("token signature does not verify") from None
    return decoded


def enrollment_proof(
    secret: bytes, claims: bytes, scheme: str, identity_pk: bytes, kem_pk: bytes
) -> bytes:
    """HMAC-SHA256 under the token secret over the token and the device's public keys."""
    transcript = _ENCODER.encode((_PROOF_DOMAIN, claims, scheme, identity_pk, kem_pk))
    return hmac.new(secret, transcript, hashlib.sha256).digest()
