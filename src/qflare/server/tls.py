"""Serving over TLS: the certificate directory, the start-up policy, and the uvicorn server.

``qflare certs init`` writes a private CA and a server certificate with :func:`init_tls_dir`;
``qflare server`` checks its settings with :func:`check_startup` (TLS unless ``--insecure``,
no plain HTTP off loopback, no dev-only settings outside dev mode) and runs :func:`serve`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI

from qflare.crypto import KeyFormatError, SignatureScheme
from qflare.crypto.x509 import (
    CA_VALID_DAYS,
    SERVER_VALID_DAYS,
    CertSummary,
    TlsCredential,
    describe_certificate,
    issue_server_cert,
    make_ca,
)
from qflare.logs import UVICORN_LOGGERS, configure_logging, uvicorn_log_options
from qflare.server.app import create_app, drain
from qflare.server.authority_client import load_authority_key
from qflare.server.connections import guarded_h11
from qflare.server.limits import Inflight
from qflare.server.settings import ServerSettings
from qflare.store.db import database_problem

MIN_SECURE_CLIENTS = 3  # with two clients, each learns the other's update from the sum
EXPIRY_WARNING = dt.timedelta(days=30)
TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"  # TLS 1.2 suites; TLS 1.3 ones are all AEAD
GRACEFUL_SHUTDOWN_S = 5  # open requests get this long to finish after SIGTERM
CA_FILE, CERT_FILE, KEY_FILE = "ca.pem", "server.pem", "server.key"


class StartupRefused(Exception):  # noqa: N818 - reads as a sentence: "startup refused"
    """The settings are unsafe for this mode; ``reasons`` says why and how to fix it.

    Args:
        reasons: One line per problem.
    """

    def __init__(self, reasons: Sequence[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = list(reasons)


@dataclass(frozen=True)
class TlsFiles:
    """The files of a TLS directory.

    Attributes:
        ca: CA certificate (public; nodes pin it).
        cert: Server certificate (public).
        key: Server private key (0600).
    """

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, directory: Path) -> TlsFiles:
        """The standard file names inside ``directory``."""
        return cls(directory / CA_FILE, directory / CERT_FILE, directory / KEY_FILE)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode`` atomically (temp file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def init_tls_dir(
    directory: Path,
    hosts: Sequence[str],
    *,
    force: bool = False,
    ca_days: int = CA_VALID_DAYS,
    server_days: int = SERVER_VALID_DAYS,
) -> TlsFiles:
    """Create a private CA and a server certificate for ``hosts`` in ``directory``.

    The CA key signs the server certificate and is then discarded: nobody can issue another
    certificate that the nodes would trust. Rotating means running this again (``force``) and
    giving the nodes the new ``ca.pem``.

    Args:
        directory: Target directory (it and missing parents are created 0700).
        hosts: DNS names and IP addresses for the server certificate.
        force: Replace existing files.
        ca_days: CA validity in days.
        server_days: Server certificate validity in days.

    Raises:
        FileExistsError: a file exists and ``force`` is false.
        ValueError: an invalid host or validity.
    """
    files = TlsFiles.in_dir(directory)
    existing = [str(p) for p in (files.ca, files.cert, files.key) if p.exists()]
    if existing and not force:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)} (use --force)")
    ca = make_ca(valid_days=ca_days)
    server: TlsCredential = issue_server_cert(ca, hosts, valid_days=server_days)
    for missing in [d for d in (*reversed(directory.parents), directory) if not d.exists()]:
        missing.mkdir(mode=0o700)  # also a new state directory: it will hold the identity key
    _write_file(files.key, server.key_pem.reveal(), 0o600)
    _write_file(files.cert, server.cert_pem, 0o644)
    _write_file(files.ca, ca.cert_pem, 0o644)
    return files


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts local connections."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls_problems(cert: Path, key: Path, now: dt.datetime) -> tuple[list[str], list[str]]:
    """(errors, warnings) about a certificate and key file pair."""
    for path in (cert, key):
        if not path.is_file():
            return [f"{path} does not exist (make it with `qflare certs init`)"], []
    if key.stat().st_mode & 0o077:
        return [f"{key} must not be readable by group or others (chmod 600 {key})"], []
    try:
        summary: CertSummary = describe_certificate(cert.read_bytes())
    except KeyFormatError:
        return [f"{cert} is not a PEM certificate"], []
    if summary.not_after <= now:
        return [f"{cert} expired on {summary.not_after:%Y-%m-%d}"], []
    if summary.not_after - now < EXPIRY_WARNING:
        return [], [f"{cert} expires on {summary.not_after:%Y-%m-%d}"]
    return [], []


def _authority_problems(settings: ServerSettings) -> tuple[list[str], list[str]]:
    """(errors, warnings) about the enrollment authority settings."""
    url, key = settings.authority_url, settings.authority_key
    if url is None and key is None:
        return [], ["no enrollment authority (authority_url, authority_key): enrollment is off"]
    if url is None or key is None:
        return ["set both authority_url and authority_key (the authority's authority.pub)"], []
    try:
        load_authority_key(key)
    except ValueError as exc:
        return [str(exc)], []
    return [], []


def check_startup(settings: ServerSettings, now: dt.datetime | None = None) -> list[str]:
    """Refuse unsafe settings; return warnings about tolerated ones.

    Refused: no TLS certificate and key without ``insecure``; unreadable, world-readable or
    expired TLS files; plain HTTP on a non-loopback address or fewer than
    :data:`MIN_SECURE_CLIENTS` clients per round, unless ``dev``; an authority URL without its
    public key (or the reverse), or a key file that is not an authority public key.

    Raises:
        StartupRefused: with every reason found.
    """
    errors: list[str] = []
    warnings: list[str] = []
    if settings.insecure:
        if settings.tls_cert or settings.tls_key:
            warnings.append("--insecure given: the TLS certificate and key are ignored")
        if not is_loopback(settings.host) and not settings.dev:
            errors.append(
                f"plain HTTP on {settings.host} would expose the federation; "
                "bind to 127.0.0.1 or serve TLS (--dev overrides)"
            )
    elif settings.tls_cert is None or settings.tls_key is None:
        errors.append(
            "TLS is required: pass --tls-cert and --tls-key (make them with `qflare certs init`), "
            "or --insecure for loopback tests"
        )
    else:
        errs, warns = _tls_problems(
            settings.tls_cert, settings.tls_key, now or dt.datetime.now(dt.UTC)
        )
        errors += errs
        warnings += warns
    if settings.min_clients < MIN_SECURE_CLIENTS and not settings.dev:
        errors.append(
            f"min_clients={settings.min_clients} lets a client learn another's update "
            f"from the sum; use at least {MIN_SECURE_CLIENTS} (--dev overrides)"
        )
    errs, warns = _authority_problems(settings)
    errors += errs
    warnings += warns
    if settings.signature_scheme == SignatureScheme.ED25519:
        warnings.append("ed25519 identities are not post-quantum; prefer mldsa65 or hybrid")
    if errors:
        raise StartupRefused(errors)
    return warnings


def uvicorn_config(
    app: FastAPI, settings: ServerSettings, log_level: str = "info"
) -> uvicorn.Config:
    """A loaded single-worker uvicorn config: TLS 1.2+ with AEAD suites unless ``insecure``.

    HTTP/1.1 over h11 with the connection limits of :mod:`qflare.server.connections` (request
    heads due within ``header_timeout_s``, at most ``max_header_bytes``; unauthenticated
    connections counted with the app's ``state.unauthenticated``), kept-alive connections closed
    after ``keep_alive_s`` idle, no WebSockets.
    """
    tls = not settings.insecure and settings.tls_cert is not None
    unauthenticated = app.state.unauthenticated
    assert isinstance(unauthenticated, Inflight), "an app made by create_app"
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        http=guarded_h11(settings.header_timeout_s, unauthenticated),
        ws="none",
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_keep_alive=settings.keep_alive_s,
        ssl_certfile=settings.tls_cert if tls else None,
        ssl_keyfile=settings.tls_key if tls else None,
        ssl_ciphers=TLS_CIPHERS,
        proxy_headers=False,  # per-IP limits must see the real peer, not a claimed one
        server_header=False,
        **uvicorn_log_options(log_level),  # JSON lines via qflare.logs; access log at debug only
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,  # a stalled client cannot hold a restart
    )
    config.load()
    if config.ssl is not None:
        config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
    return config


class _DrainingServer(uvicorn.Server):
    """Uvicorn that stops the coordinator's clock as soon as SIGTERM/SIGINT arrives."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        drain(self._app)
        super().handle_exit(sig, frame)


def listen(settings: ServerSettings) -> socket.socket:
    """Bind the server's address, before anything else (the database) is touched.

    Raises:
        StartupRefused: the address is taken (another server?) or cannot be bound.
    """
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY on accepted connections only when
    # the listening socket says so (else every answer waits ~40 ms for a delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        why = exc.strerror or str(exc)
        raise StartupRefused(
            [f"cannot listen on {settings.host}:{settings.port}: {why} (is a server running?)"]
        ) from exc
    return sock


def serve(settings: ServerSettings, log_level: str = "info") -> None:
    """Run the server until interrupted (call :func:`check_startup` first).

    Logs go to stderr as JSON lines (``qflare`` and ``uvicorn`` loggers); the per-request access
    log only at ``debug``. The port is bound first: a second server on a busy port stops before it
    opens the database.

    Raises:
        StartupRefused: the port cannot be bound, or the database cannot be opened, migrated or
            written (one line, no password, no traceback).
    """
    configure_logging(log_level, ("qflare", *UVICORN_LOGGERS))
    sock = listen(settings)
    with sock:
        problem = database_problem(settings.database_url)
        if problem is not None:
            raise StartupRefused([problem])
        app = create_app(settings)
        _DrainingServer(uvicorn_config(app, settings, log_level), app).run(sockets=[sock])
