"""Anonymous oversize bodies are refused before they are read; the limit follows the model.

The issue: four concurrent 60 MB bodies to ``/v1/results`` without a session were read whole
before being refused (server 124 -> 424 MiB). Now the session header is checked first, an
unread large body closes the connection, and a session's body may not exceed what the model
needs (413 ``body_too_large`` from ``Content-Length`` alone).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import httpx
import msgspec
import psutil

from qflare.crypto import SignatureScheme, SystemRng
from qflare.node import NodeState
from qflare.protocol.session import ServerHello, SessionInitiator
from tests.faults.live import Live

BIG = 60 * 1024 * 1024
CHUNK = b"\0" * (1024 * 1024)


def _upload(live: Live, session: str | None, out: list[tuple[int | None, int]]) -> None:
    """Push a 60 MB result body; record (status, bytes the server let us send)."""
    header = f"X-QFLARE-Session: {session}\r\n" if session else ""
    head = (
        "POST /v1/results HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
        f"{header}Content-Length: {BIG}\r\n\r\n"
    ).encode()
    sent, status = 0, None
    with live.connect() as sock:
        sock.settimeout(10)
        try:
            sock.sendall(head + CHUNK)
            sent = len(CHUNK)
            status = int(sock.recv(4096).split(b" ", 2)[1])
            while sent < BIG:  # the server said no: it must not keep taking the body
                sock.sendall(CHUNK)
                sent += len(CHUNK)
        except (OSError, IndexError, ValueError):
            pass
    out.append((status, sent))


def _session(live: Live, state: NodeState) -> str:
    """Open a session for an enrolled node over plain HTTP; return its id."""
    device = state.require_device()
    init = SessionInitiator(
        device.device_id,
        state.signer(),
        device.server_public_key,
        SystemRng(),
        SignatureScheme(device.server_scheme),
    )
    headers = {"content-type": "application/msgpack"}
    with httpx.Client(base_url=live.url, timeout=10) as http:
        hello = msgspec.msgpack.encode(init.hello(now=time.time()))
        reply = msgspec.msgpack.decode(
            http.post("/v1/sessions", content=hello, headers=headers).content, type=ServerHello
        )
        finished, channel = init.finish(reply, now=time.time())
        path = f"/v1/sessions/{channel.session_id}/confirm"
        resp = http.post(path, content=msgspec.msgpack.encode(finished), headers=headers)
        assert resp.status_code == 204, resp.text
    return channel.session_id


def test_anonymous_60mb_bodies_are_refused_unread_while_rounds_complete(
    live_factory, tmp_path: Path
):
    live: Live = live_factory(max_rounds=2)
    nodes = live.nodes(tmp_path / "nodes", 3, rounds=2)
    rss = psutil.Process(os.getpid()).memory_info().rss
    results: list[tuple[int | None, int]] = []
    uploads = [
        threading.Thread(target=_upload, args=(live, session, results))
        for session in (None, None, "0" * 32, "f" * 32)
    ]
    nodes.start()
    for thread in uploads:
        thread.start()
    for thread in uploads:
        thread.join(timeout=30)
    grown = psutil.Process(os.getpid()).memory_info().rss - rss
    assert sorted(s for s, _ in results) == [401, 401, 422, 422], results
    assert all(sent < BIG // 2 for _, sent in results), results  # the server hung up
    assert grown < 64 * 1024 * 1024, f"the server grew by {grown / 2**20:.0f} MiB"
    assert nodes.join(60) and not nodes.errors, nodes.errors
    assert live.check_rounds(nodes.states) == [1, 2]


def test_a_sessions_body_beyond_the_models_need_is_413_before_it_is_read(live_factory, tmp_path):
    live: Live = live_factory()
    nodes = live.nodes(tmp_path / "nodes", 1, rounds=1)
    session = _session(live, nodes.states[0])
    results: list[tuple[int | None, int]] = []
    _upload(live, session, results)
    [(status, sent)] = results
    assert status == 413 and sent < BIG // 2
    with live.connect() as sock:  # the answer names the problem and closes the connection
        sock.settimeout(10)
        sock.sendall(
            b"POST /v1/results HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
            + f"X-QFLARE-Session: {session}\r\nContent-Length: {BIG}\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert json.loads(body)["code"] == "body_too_large"
