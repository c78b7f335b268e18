"""Who a peer is: device certificates from an enrollment authority the server does not hold.

The enrollment authority (``qflare authority``) is the only party that can say "client index
``i`` of this federation is the device whose identity key is ``pk``". It signs a
:class:`CertificateBody` with its ML-DSA-65 key; every client verifies each peer's certificate
against the authority key it pinned at enrollment before it uses the peer's identity key. The
aggregation server only relays certificates: it cannot substitute a peer's key, and it cannot
mint devices.

Also here, because the node, the server, the authority and the CHRONOS trusted application all
need them: single-use enrollment tokens (signed claims plus a secret that only the token holder
and the authority know, so a relaying server cannot enroll its own keys with a token it sees),
endorsements of per-device keystore keys, and :class:`IdentityDirectory`, the checked map from
client index to identity key that the protocol machines read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Final

import msgspec

from qflare.crypto import CryptoError, SignatureScheme, Signer, verify_signature
from qflare.protocol.errors import AbortReason, RemoteProtocolError
from qflare.protocol.numbers import Finite

__all__ = [
    "CERT_CONTEXT",
    "ENDORSE_CONTEXT",
    "TOKEN_CONTEXT",
    "TOKEN_PREFIX",
    "AuthorityKey",
    "CertificateBody",
    "CertificateCache",
    "EndorsedKey",
    "IdentityDirectory",
    "IdentityError",
    "SignedToken",
    "TokenClaims",
    "certificate_digest",
    "decode_claims",
    "decode_authority_key",
    "encode_authority_key",
    "endorse_key",
    "endorsement_transcript",
    "enrollment_proof",
    "issue_certificate",
    "issue_token",
    "parse_certificate",
    "parse_token",
    "verify_certificate",
    "verify_endorsed_key",
    "verify_token",
]

CERT_CONTEXT: Final = b"qflare/authority/v1/device-certificate"
TOKEN_CONTEXT: Final = b"qflare/authority/v1/enrollment-token"
ENDORSE_CONTEXT: Final = b"qflare/authority/v1/keystore-endorsement"
TOKEN_PREFIX: Final = "qft1."  # noqa: S105 - a format prefix, not a password
_KEY_DOMAIN: Final = b"qflare/authority/v1/key"
_PROOF_DOMAIN: Final = b"qflare/authority/v1/enrollment-proof"
_VERSION: Final = 1
_ENCODER: Final = msgspec.msgpack.Encoder()
MAX_TOKEN_CHARS: Final = 8192


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


# ---- enrollment tokens ---------------------------------------------------------------------------


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


# ---- keystore keys endorsed by a device --------------------------------------------------------


class EndorsedKey(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A peer's certificate and, when its keystore signs with another key, the endorsement.

    A CHRONOS keystore in an enclave signs epoch keys with a key made inside the enclave. The
    device's certified identity key endorses that key once (:func:`endorse_key`); peers (and
    their enclaves) follow the chain authority -> device -> keystore key.

    Attributes:
        certificate: The device certificate.
        keystore_pk: The key that signs the device's protocol messages (empty: the identity key).
        endorsement: The identity key's signature over :func:`endorsement_transcript`.
        enclave: Whether the device says the keystore key lives in an enclave.
        version: Format version.
    """

    certificate: bytes
    keystore_pk: bytes = b""
    endorsement: bytes = b""
    enclave: bool = False
    version: int = _VERSION


def endorsement_transcript(
    session: str, client_index: int, keystore_pk: bytes, *, enclave: bool
) -> bytes:
    """Bytes an identity key signs to endorse a keystore key of ``client_index``."""
    return _ENCODER.encode((session, client_index, keystore_pk, enclave))


def endorse_key(
    signer: Signer,
    certificate: bytes,
    session: str,
    client_index: int,
    keystore_pk: bytes,
    *,
    enclave: bool,
) -> EndorsedKey:
    """The device's endorsement of ``keystore_pk`` (returns a plain entry for its own key)."""
    if keystore_pk == signer.public_key:
        return EndorsedKey(certificate=certificate)
    transcript = endorsement_transcript(session, client_index, keystore_pk, enclave=enclave)
    return EndorsedKey(
        certificate=certificate,
        keystore_pk=keystore_pk,
        endorsement=signer.sign(transcript, context=ENDORSE_CONTEXT),
        enclave=enclave,
    )


def verify_endorsed_key(
    entry: EndorsedKey, authority: AuthorityKey, session: str, client_index: int
) -> tuple[CertificateBody, bytes]:
    """Follow authority -> certificate -> endorsement; return the body and the signing key.

    Raises:
        IdentityError: any link is forged, or the certificate is for another client index.
    """
    body = verify_certificate(entry.certificate, authority)
    if body.client_index != client_index:
        raise IdentityError(f"certificate is for client {body.client_index}")
    if not entry.keystore_pk:
        return body, body.identity_pk
    transcript = endorsement_transcript(
        session, client_index, entry.keystore_pk, enclave=entry.enclave
    )
    try:
        verify_signature(
            body.scheme, body.identity_pk, entry.endorsement, transcript, context=ENDORSE_CONTEXT
        )
    except CryptoError:
        raise IdentityError("keystore key endorsement does not verify") from None
    return body, entry.keystore_pk


# ---- the checked directory the protocol machines read --------------------------------------------


class CertificateCache:
    """Certificates already verified, by digest (a node verifies each peer once, not per round).

    Args:
        limit: Entries kept (least recently used ones are forgotten first).
    """

    def __init__(self, limit: int = 100_000) -> None:
        self._limit = limit
        self._bodies: OrderedDict[tuple[bytes, bytes], CertificateBody] = OrderedDict()
        self.verified = 0  # signature checks done (for tests and benchmarks)

    def verify(self, data: bytes, authority: AuthorityKey) -> CertificateBody:
        """:func:`verify_certificate`, remembered per (authority, certificate).

        Raises:
            IdentityError: as :func:`verify_certificate`.
        """
        key = (authority.fingerprint, certificate_digest(data))
        body = self._bodies.get(key)
        if body is not None:
            self._bodies.move_to_end(key)
            return body
        body = verify_certificate(data, authority)
        self.verified += 1
        self._bodies[key] = body
        if len(self._bodies) > self._limit:
            self._bodies.popitem(last=False)
        return body


class IdentityDirectory:
    """Identity keys of a round's participants, each checked against the authority on first use.

    Args:
        authority: The pinned authority key.
        certificates: Client index -> encoded device certificate (from the server: untrusted).
        scheme: The identity scheme the round uses; a certificate of another scheme is refused.
        cache: Verified certificates shared across rounds.
    """

    def __init__(
        self,
        authority: AuthorityKey,
        certificates: Mapping[int, bytes],
        *,
        scheme: SignatureScheme,
        cache: CertificateCache | None = None,
    ) -> None:
        self._authority, self._certs, self._scheme = authority, dict(certificates), scheme
        self._cache = cache if cache is not None else CertificateCache()
        self._keys: dict[int, bytes] = {}

    def key_of(self, index: int, *, state: str) -> bytes:
        """The certified identity key of client ``index``.

        Raises:
            RemoteProtocolError: ``BAD_CERTIFICATE`` naming ``index``: no certificate, a forged
                one, one for another index or scheme.
        """
        key = self._keys.get(index)
        if key is not None:
            return key
        data = self._certs.get(index)
        why = "no certificate"
        if data is not None:
            try:
                body = self._cache.verify(data, self._authority)
            except IdentityError as exc:
                why = str(exc)
            else:
                if body.client_index == index and body.scheme is self._scheme:
                    self._keys[index] = body.identity_pk
                    return body.identity_pk
                why = f"certificate is for client {body.client_index} ({body.scheme.value})"
        raise RemoteProtocolError(
            f"peer identity refused: {why}",
            state=state,
            client=index,
            reason=AbortReason.BAD_CERTIFICATE,
        )

    def owns(self, index: int, identity_pk: bytes, *, state: str) -> None:
        """Check that the directory lists ``identity_pk`` for ``index`` (our own entry).

        Raises:
            RemoteProtocolError: the server lists another key for us.
        """
        try:
            listed = self.key_of(index, state=state)
        except RemoteProtocolError:
            listed = b""
        if not hmac.compare_digest(listed, identity_pk):
            raise RemoteProtocolError(
                "the round lists another identity for this client",
                state=state,
                client=index,
                reason=AbortReason.INCONSISTENT_VIEW,
            )
