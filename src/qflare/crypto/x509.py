"""X.509 recipes for the server's TLS: a private CA and the server certificates it signs.

Nodes pin the CA certificate (``ca.pem``) instead of trusting the system store, so the
federation needs no public CA. Keys are ECDSA P-256 with SHA-256 signatures: every TLS stack
that QFLARE talks through (OpenSSL via ``ssl``/uvicorn, httpx) supports them in TLS 1.2 and 1.3.
The certificates carry the extensions strict verifiers ask for (critical basic constraints and
key usage, subject and authority key identifiers, ``serverAuth``), so Python's
``VERIFY_X509_STRICT`` accepts them. Private keys only ever leave this module as
:class:`~qflare.crypto.SecretBytes` (PKCS#8 PEM).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qflare.crypto.errors import KeyFormatError
from qflare.crypto.secret import SecretBytes

__all__ = [
    "CA_VALID_DAYS",
    "SERVER_VALID_DAYS",
    "CertSummary",
    "TlsCredential",
    "describe_certificate",
    "issue_server_cert",
    "make_ca",
    "split_hosts",
]

CA_VALID_DAYS = 3650
SERVER_VALID_DAYS = 397
_BACKDATE = dt.timedelta(minutes=5)  # tolerate clocks that lag a little behind ours
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class TlsCredential:
    """A certificate and its private key.

    Attributes:
        cert_pem: The certificate, PEM.
        key_pem: The private key, unencrypted PKCS#8 PEM (write it 0600).
    """

    cert_pem: bytes
    key_pem: SecretBytes


@dataclass(frozen=True)
class CertSummary:
    """What an operator needs to know about a certificate.

    Attributes:
        subject: Subject as an RFC 4514 string.
        issuer: Issuer as an RFC 4514 string.
        dns_names: DNS names of the subject alternative name extension.
        ip_addresses: IP addresses of the subject alternative name extension.
        not_before: Start of validity (UTC).
        not_after: End of validity (UTC).
        is_ca: Whether the certificate may sign others.
        sha256: SHA-256 fingerprint of the DER encoding (hex), to compare out of band.
    """

    subject: str
    issuer: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    is_ca: bool
    sha256: str


def split_hosts(hosts: Sequence[str]) -> tuple[list[str], list[IpAddress]]:
    """Sort host names into DNS names and IP addresses, checking each.

    Args:
        hosts: Names such as ``localhost``, ``fl.example.org``, ``127.0.0.1`` or ``::1``.

    Returns:
        ``(dns_names, ip_addresses)`` in the order given, duplicates removed.

    Raises:
        ValueError: no host, or a name that is neither an IP address nor a valid DNS name.
    """
    dns: list[str] = []
    ips: list[IpAddress] = []
    for raw in hosts:
        host = raw.strip()
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            name = host.lower().rstrip(".")
            if len(name) > 253 or not all(_LABEL.fullmatch(p) for p in name.split(".")):
                raise ValueError(f"{raw!r} is neither an IP address nor a DNS name") from None
            if name not in dns:
                dns.append(name)
        else:
            if ip not in ips:
                ips.append(ip)
    if not dns and not ips:
        raise ValueError("a server certificate needs at least one host name or IP address")
    return dns, ips


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> SecretBytes:
    return SecretBytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """ECDSA keys sign: handshakes (every key) and certificates and CRLs (CA keys only)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _load_ca(ca: TlsCredential) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(ca.cert_pem)
        key = serialization.load_pem_private_key(ca.key_pem.reveal(), password=None)
    except ValueError as exc:
        raise KeyFormatError("CA certificate or key is not valid PEM") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFormatError("CA key must be an ECDSA key")
    if key.public_key() != cert.public_key():
        raise KeyFormatError("CA key does not belong to the CA certificate")
    return cert, key


def make_ca(
    common_name: str = "QFLARE CA",
    *,
    valid_days: int = CA_VALID_DAYS,
    now: dt.datetime | None = None,
) -> TlsCredential:
    """Create a self-signed CA that may sign server certificates (and no intermediate CAs).

    Args:
        common_name: Subject common name.
        valid_days: Validity period in days.
        now: Issuing time (default: the current UTC time).

    Raises:
        ValueError: ``valid_days`` is not positive.
    """
    if valid_days <= 0:
        raise ValueError("valid_days must be positive")
    start = _now(now) - _BACKDATE
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "QFLARE"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
        .sign(key, hashes.SHA256())
    )
    return TlsCredential(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_server_cert(
    ca: TlsCredential,
    hosts: Sequence[str],
    *,
    valid_days: int = SERVER_VALID_DAYS,
    now: dt.datetime | None = None,
) -> TlsCredential:
    """Issue a TLS server certificate for ``hosts``, signed by ``ca``.

    Args:
        ca: The CA from :func:`make_ca`.
        hosts: DNS names and IP addresses the server answers on (all go into the SAN; the
            first is also the subject common name).
        valid_days: Validity period in days (capped at the CA's remaining validity).
        now: Issuing time (default: the current UTC time).

    Raises:
        ValueError: no valid host, or a non-positive ``valid_days``.
        KeyFormatError: ``ca`` is not a matching ECDSA certificate and key.
    """
    if valid_days <= 0:
        raise ValueError("valid_days must be positive")
    dns, ips = split_hosts(hosts)
    ca_cert, ca_key = _load_ca(ca)
    start = _now(now) - _BACKDATE
    end = min(start + dt.timedelta(days=valid_days), ca_cert.not_valid_after_utc)
    key = ec.generate_private_key(ec.SECP256R1())
    san: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    san += [x509.IPAddress(ip) for ip in ips]
    common_name = dns[0] if dns else str(ips[0])
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return TlsCredential(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def describe_certificate(cert_pem: bytes) -> CertSummary:
    """Summarise a PEM certificate (for ``qflare certs`` output and start-up checks).

    Raises:
        KeyFormatError: not a PEM certificate.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise KeyFormatError("not a PEM certificate") from exc
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertSummary(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        dns_names=dns,
        ip_addresses=ips,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        is_ca=is_ca,
        sha256=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
    )
