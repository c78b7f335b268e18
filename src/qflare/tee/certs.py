"""A small certificate format for the *simulated* attestation PKI (no X.509).

A certificate is ``[body, signature]`` where ``body`` is the msgpack encoding of
:class:`CertificateBody` and ``signature`` is the issuer's signature over it (context
``qflare/tee/certificate/v1``). The simulated manufacturer, :class:`SimulatedRootCa`, issues a
self-signed root and one platform certificate per device; both carry ``simulated=True``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import msgspec

from qflare.crypto import (
    InvalidSignature,
    NoPickle,
    Rng,
    SignatureScheme,
    Signer,
    make_signer,
    verify_signature,
)
from qflare.tee.errors import AttestationError, AttestationFailure

CERT_CONTEXT = b"qflare/tee/certificate/v1"
SIMULATED_ROOT_NAME = "QFLARE SIMULATED ROOT CA (NOT A REAL TEE VENDOR)"
_VERSION = 1
_YEAR_S = 365 * 24 * 3600


class CertificateBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The signed content of a certificate.

    Attributes:
        subject: Name of the key holder (a platform id for device certificates).
        issuer: Subject of the issuing certificate.
        scheme: Signature scheme of ``public_key``.
        public_key: The certified key.
        simulated: True for anything issued by the simulated PKI.
        is_ca: Whether the key may issue certificates.
        not_before: Start of validity, Unix seconds.
        not_after: End of validity, Unix seconds.
        version: Format version.
    """

    subject: str
    issuer: str
    scheme: SignatureScheme
    public_key: bytes
    simulated: bool
    is_ca: bool
    not_before: int
    not_after: int
    version: int = _VERSION


class Certificate(msgspec.Struct, frozen=True, array_like=True):
    """An encoded body and the issuer's signature over it."""

    body: bytes
    signature: bytes


def issue_certificate(body: CertificateBody, issuer: Signer) -> bytes:
    """Sign ``body`` with ``issuer`` and return the encoded certificate."""
    encoded = msgspec.msgpack.encode(body)
    signature = issuer.sign(encoded, context=CERT_CONTEXT)
    return msgspec.msgpack.encode(Certificate(body=encoded, signature=signature))


def parse_certificate(data: bytes) -> tuple[CertificateBody, Certificate]:
    """Decode a certificate without checking its signature.

    Raises:
        AttestationError: malformed certificate (reason ``MALFORMED``).
    """
    try:
        cert = msgspec.msgpack.decode(data, type=Certificate)
        body = msgspec.msgpack.decode(cert.body, type=CertificateBody)
    except (msgspec.MsgspecError, ValueError):  # ValueError: invalid UTF-8
        raise AttestationError(AttestationFailure.MALFORMED, "malformed certificate") from None
    if body.version != _VERSION:
        raise AttestationError(AttestationFailure.MALFORMED, "unsupported certificate version")
    return body, cert


def verify_certificate(data: bytes, issuer: CertificateBody, *, now: float) -> CertificateBody:
    """Check that ``data`` was issued by ``issuer`` and is valid at ``now``; return its body.

    Raises:
        AttestationError: wrong issuer, bad signature, expired, or issuer not a CA.
    """
    body, cert = parse_certificate(data)
    if not issuer.is_ca or body.issuer != issuer.subject:
        raise AttestationError(
            AttestationFailure.UNTRUSTED_CHAIN, f"{body.subject!r} not issued by {issuer.subject!r}"
        )
    try:
        verify_signature(
            issuer.scheme, issuer.public_key, cert.signature, cert.body, context=CERT_CONTEXT
        )
    except InvalidSignature:
        raise AttestationError(
            AttestationFailure.UNTRUSTED_CHAIN, f"certificate of {body.subject!r} is forged"
        ) from None
    if not body.not_before <= now <= body.not_after:
        raise AttestationError(
            AttestationFailure.UNTRUSTED_CHAIN, f"certificate of {body.subject!r} is not valid now"
        )
    return body


def verify_root(data: bytes, *, now: float) -> CertificateBody:
    """Check a self-signed root certificate and return its body.

    Raises:
        AttestationError: not self-signed, not a CA, forged or expired.
    """
    body, _ = parse_certificate(data)
    return verify_certificate(data, body, now=now)


@dataclass(frozen=True, slots=True)
class _Validity:
    not_before: int
    not_after: int

    @classmethod
    def years(cls, now: float, years: int) -> _Validity:
        return cls(int(now) - 3600, int(now) + years * _YEAR_S)


class SimulatedRootCa(NoPickle):
    """The simulated TEE manufacturer: a root key that certifies platform attestation keys.

    Its private key lives in the process that provisions devices (a test, or a factory tool),
    never in a device. Everything it issues says ``simulated=True``.

    Args:
        signer: The root signing key.
        now: Issue time of the root certificate (Unix seconds).
        name: Root subject name.
    """

    def __init__(self, signer: Signer, *, now: float, name: str = SIMULATED_ROOT_NAME) -> None:
        self._signer = signer
        self.name = name
        validity = _Validity.years(now, 20)
        self.body = CertificateBody(
            subject=name,
            issuer=name,
            scheme=signer.scheme,
            public_key=signer.public_key,
            simulated=True,
            is_ca=True,
            not_before=validity.not_before,
            not_after=validity.not_after,
        )
        self.certificate = issue_certificate(self.body, signer)

    @classmethod
    def generate(
        cls,
        rng: Rng,
        *,
        scheme: SignatureScheme = SignatureScheme.MLDSA65,
        now: float | None = None,
    ) -> SimulatedRootCa:
        """Make a new simulated root CA."""
        return cls(make_signer(scheme, rng), now=time.time() if now is None else now)

    def certify_platform(
        self, *, platform_id: str, scheme: SignatureScheme, public_key: bytes, now: float
    ) -> bytes:
        """Issue a (simulated) platform attestation-key certificate valid for 10 years."""
        validity = _Validity.years(now, 10)
        body = CertificateBody(
            subject=platform_id,
            issuer=self.name,
            scheme=scheme,
            public_key=public_key,
            simulated=True,
            is_ca=False,
            not_before=validity.not_before,
            not_after=validity.not_after,
        )
        return issue_certificate(body, self._signer)

    def __repr__(self) -> str:
        return f"SimulatedRootCa({self.name!r}, {self.body.scheme.value}, <redacted key>)"
