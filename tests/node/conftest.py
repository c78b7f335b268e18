"""A real QFLARE server on loopback (uvicorn in a thread) for end-to-end node tests."""

from __future__ import annotations

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

from qflare.server.app import create_app
from qflare.server.settings import ServerSettings
from qflare.server.tls import TlsFiles, init_tls_dir
from tests.authority.helpers import TestAuthority, make_authority


@dataclass
class LiveServer:
    url: str
    settings: ServerSettings
    thread: threading.Thread
    server: uvicorn.Server
    authority: TestAuthority
    ca: Path | None = None

    def new_token(self, ttl_s: float = 600.0) -> str:
        """A token from the federation's enrollment authority (in-process, its own directory)."""
        return self.authority.token(ttl=ttl_s, label="test")

    def get(self, path: str) -> httpx.Response:
        verify = ssl.create_default_context(cafile=str(self.ca)) if self.ca else True
        return httpx.get(self.url + path, timeout=10, verify=verify)


def _socket(port: int = 0) -> socket.socket:
    # IPPROTO_TCP: asyncio then sets TCP_NODELAY on accepted connections (no ~40 ms stalls)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def start_server(
    tmp: Path,
    port: int = 0,
    tls: TlsFiles | None = None,
    authority: TestAuthority | None = None,
    **overrides: object,
) -> LiveServer:
    """Start the server app on loopback (a free port by default); wait until it answers.

    Plain HTTP (``insecure``) unless ``tls`` names a certificate, key and CA. Enrollments go to
    ``authority`` (a restarted server passes the same one), by default a new one in ``tmp``.
    """
    if authority is None:
        authority = make_authority(tmp / "authority")
    values: dict[str, object] = {
        "database_url": f"sqlite:///{tmp}/db.sqlite",
        "state_dir": tmp / "server",
        "insecure": True,
        "dev": True,
        "dataset": "digits",
        "min_clients": 3,
        "step_timeout_s": 5.0,
        "round_interval_s": 0.0,
        "max_rounds": 1,
        "signature_scheme": "ed25519",
        "long_poll_max_s": 2.0,
        "authority_key": authority.pub,
    }
    if tls is not None:
        values |= {"insecure": False, "tls_cert": tls.cert, "tls_key": tls.key}
    values.update(overrides)
    settings = ServerSettings(**values)  # type: ignore[arg-type]
    sock = _socket(port)
    port = sock.getsockname()[1]
    ssl_files = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)} if tls else {}
    app = create_app(settings, authority=authority.service)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", **ssl_files)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    scheme = "https" if tls else "http"
    live = LiveServer(
        f"{scheme}://127.0.0.1:{port}", settings, thread, server, authority, tls.ca if tls else None
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and thread.is_alive():
        try:
            if live.get("/v1/health").status_code == 200:
                return live
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def stop_server(live: LiveServer) -> None:
    live.server.should_exit = True
    live.thread.join(timeout=10)
    live.authority.close()


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    live = start_server(tmp_path)
    yield live
    stop_server(live)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[LiveServer]:
    files = init_tls_dir(tmp_path / "tls", ["127.0.0.1"])
    live = start_server(tmp_path, tls=files)
    yield live
    stop_server(live)
