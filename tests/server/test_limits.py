"""Abuse limits: body caps, token-bucket rates, bounded long-polls (SQLite only: no storage here)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from qflare.protocol.wire import SealedFrame
from tests.server.helpers import MSGPACK, code, encode


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/db.sqlite"


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_per_ip_rate_limit_is_429_and_refills(start_server):
    clock = FakeClock()
    server = start_server(clock=clock, rate_per_ip=3.0, rate_per_device=3.0)

    def attempt() -> int:
        return server.client.post("/v1/enroll", content=b"\xc1", headers=MSGPACK).status_code

    assert [attempt() for _ in range(5)] == [400, 400, 400, 429, 429]
    clock.now += 1.0  # three tokens flow back
    assert [attempt() for _ in range(4)] == [400, 400, 400, 429]


def test_per_device_rate_is_its_own(start_server):
    server = start_server(rate_per_ip=1000.0, rate_per_device=2.0)
    dev = server.enrolled()
    session = dev.open_session()
    assert [dev.poll(session).status_code for _ in range(4)] == [204, 204, 429, 429]


def test_handshake_and_result_bodies_are_capped(start_server):
    server = start_server(body_limit_session=512, body_limit_results=1024)
    dev = server.enrolled()
    resp = dev.hello(dev.initiator())  # an ephemeral hybrid KEM key alone is 1216 bytes
    assert resp.status_code == 413
    frame = SealedFrame(session_id="0" * 32, seq=1, ciphertext=b"\0" * 2048)
    resp = server.client.post("/v1/results", content=encode(frame), headers=MSGPACK)
    assert resp.status_code == 413


def test_long_polls_are_bounded(start_server):
    server = start_server(max_long_polls=1, min_clients=3)  # no round opens for two devices
    a, b = server.enrolled(), server.enrolled()
    sa, sb = a.open_session(), b.open_session()
    statuses: list[int] = []
    waiter = threading.Thread(target=lambda: statuses.append(a.poll(sa, wait=1.5).status_code))
    waiter.start()
    deadline = time.monotonic() + 3.0
    while not server.ctx.long_polls.locked() and time.monotonic() < deadline:
        time.sleep(0.01)
    resp = b.poll(sb)
    assert resp.status_code == 503 and code(resp) == "too_many_polls"
    waiter.join()
    assert statuses == [204]
    assert b.poll(sb).status_code == 204
