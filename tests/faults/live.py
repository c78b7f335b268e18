"""A real server on loopback for the abuse tests: uvicorn with the production HTTP config.

Unlike ``tests/node/conftest.py``, the server here runs exactly what ``qflare server`` runs:
:func:`~qflare.server.tls.listen` binds the port, :func:`~qflare.server.tls.uvicorn_config`
builds the guarded h11 protocol, keep-alive and header limits from the settings. Honest nodes are
the real node stack (:mod:`qflare.bench.honest`) with deterministic trainers.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from qflare.bench.honest import HonestNodes, enroll_nodes, trainer_for
from qflare.crypto import SignatureScheme
from qflare.node import ConstantTrainer, NodeState
from qflare.protocol.quantize import QuantConfig
from qflare.server.app import create_app
from qflare.server.settings import ServerSettings
from qflare.server.tls import listen, uvicorn_config
from tests.authority.helpers import TestAuthority, make_authority
from tests.faults.helpers import assert_rounds_exact

DIM = 1000


@dataclass
class Live:
    """A running server, its authority, and what the tests need to check its rounds."""

    url: str
    port: int
    settings: ServerSettings
    server: uvicorn.Server
    thread: threading.Thread
    authority: TestAuthority

    def nodes(self, root: Path, count: int, rounds: int) -> HonestNodes:
        """Enroll ``count`` honest nodes (before any attack) that will run ``rounds`` rounds."""
        tokens = [self.authority.token() for _ in range(count)]
        states = enroll_nodes(
            self.url, tokens, root, SignatureScheme(self.settings.signature_scheme)
        )
        return HonestNodes(self.url, states, max_rounds=rounds, poll_wait=1.0)

    def check_rounds(self, states: list[NodeState]) -> list[int]:
        """Every stored round against its exact sum; the ids of the completed ones."""
        trainers: dict[str, ConstantTrainer] = {
            s.require_device().device_id: trainer_for(i) for i, s in enumerate(states)
        }
        quant = QuantConfig(self.settings.clip, 32, self.settings.max_total_weight)
        return assert_rounds_exact(self.settings.database_url, trainers.__getitem__, quant, DIM)

    def connect(self) -> socket.socket:
        """A raw TCP connection to the server."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def start_live(tmp: Path, **overrides: Any) -> Live:
    """Start the server (plain HTTP on 127.0.0.1, a free port) and wait until it answers."""
    authority = make_authority(tmp / "authority")
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp}/db.sqlite",
        "state_dir": tmp / "server",
        "host": "127.0.0.1",
        "port": 0,
        "insecure": True,
        "dev": True,
        "model": f"vector:{DIM}",
        "signature_scheme": "ed25519",
        "min_clients": 3,
        "max_clients": 3,
        "round_interval_s": 0.0,
        "step_timeout_s": 10.0,
        "long_poll_max_s": 1.0,
        "authority_key": authority.pub,
    }
    settings = ServerSettings(**(values | overrides))
    sock = listen(settings)
    port = sock.getsockname()[1]
    app = create_app(settings, authority=authority.service)
    server = uvicorn.Server(uvicorn_config(app, settings, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    live = Live(f"http://127.0.0.1:{port}", port, settings, server, thread, authority)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and thread.is_alive():
        try:
            if httpx.get(live.url + "/v1/health", timeout=5).status_code == 200:
                return live
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def stop_live(live: Live) -> None:
    live.server.should_exit = True
    live.thread.join(timeout=15)
    live.authority.close()


@pytest.fixture
def live_factory(tmp_path: Path) -> Iterator[Any]:
    """``start(**overrides)``: a live server stopped after the test."""
    started: list[Live] = []

    def start(**overrides: Any) -> Live:
        live = start_live(tmp_path, **overrides)
        started.append(live)
        return live

    yield start
    for live in started:
        stop_live(live)
