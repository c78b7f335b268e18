"""Attestation evidence in a COSE_Sign1-like shape, and a verifier that can say no.

Evidence is ``[protected, unprotected, payload, signature]`` (the COSE_Sign1 layout, encoded
with msgpack instead of CBOR): ``protected`` is the encoded :class:`ProtectedHeader` (algorithm,
key id), ``unprotected`` carries the platform certificate chain (``x5chain``), ``payload`` is
the encoded :class:`EvidenceClaims`, and ``signature`` covers
``["Signature1", protected, b"", payload]`` like COSE's ``Sig_structure``.

The verifier checks, in order: the certificate chain up to a trusted root, the signature, the
simulated flag (refused unless ``allow_simulated``), the measurement against reference values,
freshness (timestamp and a one-time nonce) and the key binding in ``report_data``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec

from qflare.crypto import InvalidSignature, Rng, SignatureScheme, Signer, verify_signature
from qflare.tee.certs import CertificateBody, parse_certificate, verify_certificate, verify_root
from qflare.tee.errors import AttestationError, AttestationFailure
from qflare.tee.interface import REPORT_DATA_BYTES

EVIDENCE_CONTEXT = b"qflare/tee/evidence/v1"
CONTENT_TYPE = "application/vnd.qflare.tee-claims+msgpack"
NONCE_BYTES = 32
_KEY_HASH_DOMAIN = b"qflare/tee/report-data/v1"
_MAX_CHAIN = 4
_VERSION = 1


class ProtectedHeader(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Signed header: algorithm, content type, and the signing key's id (SHA-256 of it)."""

    alg: SignatureScheme
    kid: bytes
    content_type: str = CONTENT_TYPE


class UnprotectedHeader(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Unsigned header: the certificate chain, leaf (platform) first."""

    x5chain: tuple[bytes, ...]


class EvidenceClaims(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the platform asserts about the enclave.

    Attributes:
        measurement: Measurement of the running trusted application.
        report_data: 64 bytes chosen by the caller, e.g. ``H(public key) || nonce``.
        platform_id: Identity of the (simulated) platform.
        simulated: True: produced by the simulated backend, not by TEE hardware.
        timestamp_ns: Platform time at signing, Unix nanoseconds.
        ta_name: Name of the trusted application.
        ta_version: Version of the trusted application.
        version: Format version.
    """

    measurement: bytes
    report_data: bytes
    platform_id: str
    simulated: bool
    timestamp_ns: int
    ta_name: str
    ta_version: int
    version: int = _VERSION


class EvidenceEnvelope(msgspec.Struct, frozen=True, array_like=True):
    """The COSE_Sign1-shaped container."""

    protected: bytes
    unprotected: UnprotectedHeader
    payload: bytes
    signature: bytes


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    return msgspec.msgpack.encode(("Signature1", protected, b"", payload))


def key_id(public_key: bytes) -> bytes:
    """Key identifier used in the protected header."""
    return hashlib.sha256(public_key).digest()


def sign_evidence(claims: EvidenceClaims, signer: Signer, chain: Sequence[bytes]) -> bytes:
    """Encode and sign ``claims`` with the platform key; attach the certificate ``chain``."""
    protected = msgspec.msgpack.encode(
        ProtectedHeader(alg=signer.scheme, kid=key_id(signer.public_key))
    )
    payload = msgspec.msgpack.encode(claims)
    signature = signer.sign(_sig_structure(protected, payload), context=EVIDENCE_CONTEXT)
    envelope = EvidenceEnvelope(
        protected, UnprotectedHeader(x5chain=tuple(chain)), payload, signature
    )
    return msgspec.msgpack.encode(envelope)


def key_digest(public_key: bytes) -> bytes:
    """``SHA-256(domain || public_key)``: the key half of ``report_data``."""
    return hashlib.sha256(_KEY_HASH_DOMAIN + public_key).digest()


def report_data_for(public_key: bytes, nonce: bytes) -> bytes:
    """``key_digest(public_key) || nonce``: binds a key and a challenge into evidence."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError("nonce must be 32 bytes")
    return key_digest(public_key) + nonce


@dataclass(frozen=True, slots=True)
class VerificationPolicy:
    """What a verifier accepts.

    Attributes:
        trusted_roots: Encoded root certificates (self-signed) that anchor platform chains.
        measurements: Reference measurements of acceptable trusted applications.
        allow_simulated: Accept evidence from the simulated backend. Off by default.
        max_age_s: Largest accepted distance between the evidence timestamp and now.
    """

    trusted_roots: tuple[bytes, ...]
    measurements: frozenset[bytes]
    allow_simulated: bool = False
    max_age_s: float = 300.0


@dataclass(frozen=True, slots=True)
class AttestationResult:
    """Accepted evidence.

    Attributes:
        claims: The verified claims.
        platform: Body of the platform certificate that signed them.
        simulated: Whether anything in the chain or the claims is simulated.
    """

    claims: EvidenceClaims
    platform: CertificateBody
    simulated: bool


def _fail(reason: AttestationFailure, message: str) -> AttestationError:
    return AttestationError(reason, message)


def _decode_envelope(evidence: bytes) -> tuple[EvidenceEnvelope, ProtectedHeader, EvidenceClaims]:
    try:
        envelope = msgspec.msgpack.decode(evidence, type=EvidenceEnvelope)
        header = msgspec.msgpack.decode(envelope.protected, type=ProtectedHeader)
        claims = msgspec.msgpack.decode(envelope.payload, type=EvidenceClaims)
    except (msgspec.MsgspecError, ValueError):  # ValueError: invalid UTF-8
        raise _fail(AttestationFailure.MALFORMED, "evidence does not decode") from None
    if claims.version != _VERSION or header.content_type != CONTENT_TYPE:
        raise _fail(AttestationFailure.MALFORMED, "unsupported evidence version or content type")
    if len(envelope.unprotected.x5chain) not in range(1, _MAX_CHAIN + 1):
        raise _fail(AttestationFailure.UNTRUSTED_CHAIN, "certificate chain length out of range")
    return envelope, header, claims


def _walk_chain(
    chain: Sequence[bytes], roots: dict[str, CertificateBody], now: float
) -> list[CertificateBody]:
    """Verify ``chain`` (leaf first) up to a trusted root; return bodies leaf..root."""
    bodies = [parse_certificate(c)[0] for c in chain]
    issuer = roots.get(bodies[-1].issuer)
    if issuer is None:
        raise _fail(AttestationFailure.UNTRUSTED_CHAIN, "chain does not end at a trusted root")
    verified = [issuer]
    for cert, body in zip(reversed(chain), reversed(bodies), strict=True):
        verified.append(verify_certificate(cert, verified[-1], now=now))
        if body.is_ca == (len(verified) == len(chain) + 1):
            raise _fail(AttestationFailure.UNTRUSTED_CHAIN, "leaf is a CA or intermediate is not")
    return verified[::-1]


def verify_evidence(
    evidence: bytes,
    *,
    policy: VerificationPolicy,
    report_data: bytes,
    now: float,
    roots: dict[str, CertificateBody] | None = None,
) -> AttestationResult:
    """Verify ``evidence`` statelessly against ``policy`` and the expected ``report_data``.

    Nonce bookkeeping is the caller's job (see :class:`AttestationVerifier`).

    Raises:
        AttestationError: with the first failed check as ``reason``.
    """
    anchors = roots if roots is not None else _load_roots(policy, now)
    envelope, header, claims = _decode_envelope(evidence)
    certs = _walk_chain(envelope.unprotected.x5chain, anchors, now)
    platform = certs[0]
    if header.alg is not platform.scheme or header.kid != key_id(platform.public_key):
        raise _fail(AttestationFailure.BAD_SIGNATURE, "header does not name the platform key")
    try:
        verify_signature(
            platform.scheme,
            platform.public_key,
            envelope.signature,
            _sig_structure(envelope.protected, envelope.payload),
            context=EVIDENCE_CONTEXT,
        )
    except InvalidSignature:
        raise _fail(AttestationFailure.BAD_SIGNATURE, "evidence signature is invalid") from None
    simulated = claims.simulated or any(c.simulated for c in certs)
    _check_claims(claims, policy=policy, simulated=simulated, report_data=report_data, now=now)
    return AttestationResult(claims=claims, platform=platform, simulated=simulated)


def _check_claims(
    claims: EvidenceClaims,
    *,
    policy: VerificationPolicy,
    simulated: bool,
    report_data: bytes,
    now: float,
) -> None:
    if simulated and not policy.allow_simulated:
        raise _fail(AttestationFailure.SIMULATED, "simulated TEE evidence is not allowed")
    if claims.measurement not in policy.measurements:
        raise _fail(AttestationFailure.MEASUREMENT, "measurement matches no reference value")
    if abs(now - claims.timestamp_ns / 1e9) > policy.max_age_s:
        raise _fail(AttestationFailure.STALE, "evidence timestamp is outside the accepted window")
    if len(report_data) != REPORT_DATA_BYTES or len(claims.report_data) != REPORT_DATA_BYTES:
        raise _fail(AttestationFailure.MALFORMED, "report data must be 64 bytes")
    if not hmac.compare_digest(claims.report_data[32:], report_data[32:]):
        raise _fail(AttestationFailure.STALE, "evidence answers another challenge")
    if not hmac.compare_digest(claims.report_data[:32], report_data[:32]):
        raise _fail(AttestationFailure.KEY_BINDING, "evidence binds another key")


def _load_roots(policy: VerificationPolicy, now: float) -> dict[str, CertificateBody]:
    roots = [verify_root(r, now=now) for r in policy.trusted_roots]
    return {r.subject: r for r in roots}


class AttestationVerifier:
    """A relying party: issues one-time nonces and verifies evidence against a policy.

    Args:
        policy: What to accept.
        rng: Source of nonces.
        clock: Current time in Unix seconds.
        nonce_ttl_s: How long an issued nonce stays usable.
    """

    def __init__(
        self,
        policy: VerificationPolicy,
        *,
        rng: Rng,
        clock: Callable[[], float] = time.time,
        nonce_ttl_s: float = 120.0,
    ) -> None:
        self.policy = policy
        self._rng, self._clock, self._ttl = rng, clock, nonce_ttl_s
        self._roots = _load_roots(policy, clock())
        self._outstanding: dict[bytes, float] = {}

    def challenge(self) -> bytes:
        """Issue a fresh 32-byte nonce; it is accepted once, within ``nonce_ttl_s``."""
        self._expire()
        nonce = self._rng.random_bytes(NONCE_BYTES)
        self._outstanding[nonce] = self._clock()
        return nonce

    def _expire(self) -> None:
        cutoff = self._clock() - self._ttl
        self._outstanding = {n: t for n, t in self._outstanding.items() if t >= cutoff}

    def verify(self, evidence: bytes, *, public_key: bytes, nonce: bytes) -> AttestationResult:
        """Verify evidence that must bind ``public_key`` and answer ``nonce``.

        The nonce is consumed whatever the outcome.

        Raises:
            AttestationError: any check failed; ``STALE`` for an unknown, used or expired nonce.
        """
        self._expire()
        if self._outstanding.pop(nonce, None) is None:
            raise _fail(AttestationFailure.STALE, "nonce was not issued, already used, or expired")
        return verify_evidence(
            evidence,
            policy=self.policy,
            report_data=report_data_for(public_key, nonce),
            now=self._clock(),
            roots=self._roots,
        )
