"""TLS: ``certs init`` makes a chain that ``ssl`` and httpx verify; uvicorn serves it; policy."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from qflare.authority import init_authority
from qflare.crypto import SystemRng
from qflare.crypto.x509 import describe_certificate, issue_server_cert, make_ca, split_hosts
from qflare.server.app import create_app
from qflare.server.tls import (
    StartupRefused,
    TlsFiles,
    check_startup,
    init_tls_dir,
    uvicorn_config,
)
from tests.server.conftest import make_settings


@dataclass
class TlsServer:
    port: int
    files: TlsFiles
    identity_sha256: str


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    root = tmp_path_factory.mktemp("tls-server")
    files = init_tls_dir(root / "tls", ["localhost", "127.0.0.1"])
    init_authority(root / "authority", SystemRng())
    settings = make_settings(
        f"sqlite:///{root}/db.sqlite",
        root,
        insecure=False,
        tls_cert=files.cert,
        tls_key=files.key,
        min_clients=3,
        authority_url="http://127.0.0.1:9",
        authority_key=root / "authority" / "authority.pub",
    )
    assert check_startup(settings) == [
        "ed25519 identities are not post-quantum; prefer mldsa65 or hybrid"
    ]
    app = create_app(settings)
    server = uvicorn.Server(uvicorn_config(app, settings, log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    identity = hashlib.sha256(app.state.ctx.identity.public_key).hexdigest()
    yield TlsServer(sock.getsockname()[1], files, identity)
    server.should_exit = True
    thread.join(10)
    app.state.ctx.factory.kw["bind"].dispose()


def _pinned(files: TlsFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(files.ca))


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_health_over_https_with_the_pinned_ca(tls_server: TlsServer, host):
    url = f"https://{host}:{tls_server.port}/v1/health"
    with httpx.Client(verify=_pinned(tls_server.files)) as client:
        resp = client.get(url)
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "server_key_sha256": tls_server.identity_sha256}


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_python_ssl_verifies_the_chain_and_negotiates_tls12_or_13(tls_server: TlsServer, host):
    ctx = _pinned(tls_server.files)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    with (
        socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        cert = tls.getpeercert()
    assert ("DNS", "localhost") in cert["subjectAltName"]
    assert ("IP Address", "127.0.0.1") in cert["subjectAltName"]


def test_clients_that_do_not_trust_the_ca_are_refused(tls_server: TlsServer, tmp_path: Path):
    url = f"https://localhost:{tls_server.port}/v1/health"
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(url)  # the system trust store does not know our private CA
    other = init_tls_dir(tmp_path / "other", ["localhost"])
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(url, verify=_pinned(other))


def test_name_outside_the_san_is_refused(tls_server: TlsServer):
    ctx = _pinned(tls_server.files)
    with (
        socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError, match=r"evil\.example\.org"),
    ):
        ctx.wrap_socket(raw, server_hostname="evil.example.org")


def test_chain_verifies_with_the_x509_policy_verifier():
    ca = make_ca()
    leaf = issue_server_cert(ca, ["fl.example.org", "localhost", "10.0.0.7", "::1"])
    store = Store([x509.load_pem_x509_certificate(ca.cert_pem)])
    cert = x509.load_pem_x509_certificate(leaf.cert_pem)
    for name in (
        x509.DNSName("fl.example.org"),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("10.0.0.7")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ):
        PolicyBuilder().store(store).build_server_verifier(name).verify(cert, [])
    with pytest.raises(VerificationError):
        PolicyBuilder().store(store).build_server_verifier(x509.DNSName("other.org")).verify(
            cert, []
        )
    other_store = Store([x509.load_pem_x509_certificate(make_ca().cert_pem)])
    with pytest.raises(VerificationError):
        verifier = (
            PolicyBuilder().store(other_store).build_server_verifier(x509.DNSName("localhost"))
        )
        verifier.verify(cert, [])


def test_certificate_summary_and_validity():
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    ca = make_ca(valid_days=100, now=now)
    leaf = issue_server_cert(ca, ["localhost", "127.0.0.1"], valid_days=397, now=now)
    ca_info, info = describe_certificate(ca.cert_pem), describe_certificate(leaf.cert_pem)
    assert ca_info.is_ca and not info.is_ca
    assert info.dns_names == ("localhost",) and info.ip_addresses == ("127.0.0.1",)
    assert info.issuer == ca_info.subject
    assert info.not_before < now < info.not_after
    assert info.not_after <= ca_info.not_after  # capped at the CA's validity
    assert "redacted" in repr(leaf.key_pem)
    assert leaf.key_pem.reveal().startswith(b"-----BEGIN PRIVATE KEY-----")


@pytest.mark.parametrize("hosts", [[], [""], ["bad_name"], ["-x.org"], ["a" * 64 + ".org"]])
def test_invalid_hosts_are_refused(hosts):
    with pytest.raises(ValueError):
        split_hosts(hosts)


def test_init_tls_dir_modes_and_overwrite(tmp_path: Path):
    files = init_tls_dir(tmp_path / "tls", ["localhost"])
    assert files.key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "tls").stat().st_mode & 0o777 == 0o700
    assert files.ca.stat().st_mode & 0o777 == 0o644
    before = files.ca.read_bytes()
    with pytest.raises(FileExistsError):
        init_tls_dir(tmp_path / "tls", ["localhost"])
    assert files.ca.read_bytes() == before
    init_tls_dir(tmp_path / "tls", ["localhost"], force=True)
    assert files.ca.read_bytes() != before
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == [
        "ca.pem",
        "server.key",
        "server.pem",
    ]


def _settings(tmp_path: Path, **overrides) -> object:
    if not (tmp_path / "authority").exists():
        init_authority(tmp_path / "authority", SystemRng())
    authority = {
        "authority_url": "http://127.0.0.1:9",
        "authority_key": tmp_path / "authority" / "authority.pub",
    }
    return make_settings(f"sqlite:///{tmp_path}/db.sqlite", tmp_path, **(authority | overrides))


def test_startup_policy_for_the_enrollment_authority(tmp_path: Path):
    base = {"insecure": True, "min_clients": 3, "signature_scheme": "mldsa65"}
    assert check_startup(_settings(tmp_path, **base)) == []
    off = _settings(tmp_path, **base, authority_url=None, authority_key=None)
    assert check_startup(off) == [
        "no enrollment authority (authority_url, authority_key): enrollment is off"
    ]
    refusals = {
        "set both": {"authority_key": None},
        "never authority.key": {"authority_key": tmp_path / "authority" / "authority.key"},
        "does not exist": {"authority_key": tmp_path / "nope.pub"},
    }
    for reason, overrides in refusals.items():
        with pytest.raises(StartupRefused, match=reason):
            check_startup(_settings(tmp_path, **base, **overrides))


def test_startup_policy(tmp_path: Path):
    files = init_tls_dir(tmp_path / "tls", ["localhost"])
    tls = {"insecure": False, "tls_cert": files.cert, "tls_key": files.key, "min_clients": 3}
    assert check_startup(_settings(tmp_path, **tls, signature_scheme="mldsa65")) == []
    refusals = {
        "TLS is required": {"insecure": False, "min_clients": 3},
        "plain HTTP on 0.0.0.0": {"host": "0.0.0.0", "min_clients": 3},
        "min_clients=2": tls | {"min_clients": 2},
        "does not exist": tls | {"tls_key": tmp_path / "missing.key"},
    }
    for reason, overrides in refusals.items():
        with pytest.raises(StartupRefused, match=reason):
            check_startup(_settings(tmp_path, **overrides))
    assert check_startup(_settings(tmp_path, host="0.0.0.0", dev=True, min_clients=2)) == [
        "ed25519 identities are not post-quantum; prefer mldsa65 or hybrid"
    ]
    files.key.chmod(0o644)
    with pytest.raises(StartupRefused, match="chmod 600"):
        check_startup(_settings(tmp_path, **tls))


def test_expired_and_expiring_certificates(tmp_path: Path):
    files = init_tls_dir(tmp_path / "tls", ["localhost"])
    tls = {"insecure": False, "tls_cert": files.cert, "tls_key": files.key, "min_clients": 3}
    settings = _settings(tmp_path, **tls, signature_scheme="mldsa65")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=380)
    assert check_startup(settings, now=later)[0].endswith(
        f"expires on {describe_certificate(files.cert.read_bytes()).not_after:%Y-%m-%d}"
    )
    with pytest.raises(StartupRefused, match="expired"):
        check_startup(settings, now=later + dt.timedelta(days=30))
