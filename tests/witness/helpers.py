"""Witnesses for tests: a directory, its service, and its app served on loopback in a thread."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from qflare.crypto import DeterministicRng
from qflare.ledger import decode_public_key
from qflare.witness import WitnessDir, WitnessService, create_witness_app


@dataclass
class LiveWitness:
    """A witness app served by uvicorn in a thread."""

    url: str
    service: WitnessService
    key_file: Path
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def public_key(self) -> bytes:
        return decode_public_key(self.key_file.read_text())

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def make_service(root: Path, server_key: bytes, seed: int = 0) -> WitnessService:
    """A fresh witness in ``root`` pinning ``server_key``."""
    wdir, _ = WitnessDir.init(root, DeterministicRng(b"witness-%d" % seed))
    return WitnessService.open(wdir, server_key, time.time)


def serve_witness(root: Path, server_key: bytes, seed: int = 0) -> LiveWitness:
    """Start a fresh witness on a free loopback port; wait until it answers."""
    service = make_service(root, server_key, seed)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_witness_app(service), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    live = LiveWitness(url, service, WitnessDir(root).public_key_file, server, thread)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return live
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("witness did not start")
