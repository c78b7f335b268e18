"""Abuse limits: body caps, token-bucket rates, bounded long-polls (SQLite only: no storage here)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from qflare.protocol.wire import SealedFrame
from qflare.server.limits import result_body_limit
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
    resp = server.client.post("/v1/enroll", content=b"\xc1", headers=MSGPACK)
    assert resp.status_code == 429 and code(resp) == "rate_limited"
    assert resp.headers["retry-after"] == "1"


def test_authenticated_traffic_is_metered_per_device_not_per_ip(start_server):
    """A burst of bad tokens from the devices' own address does not starve their sessions."""
    clock = FakeClock()
    server = start_server(clock=clock, rate_per_ip=5.0, rate_per_device=20.0)
    dev = server.enrolled()
    session = dev.open_session()  # enroll + hello + confirm: three anonymous requests
    forged = {"X-QFLARE-Session": "f" * 32, "X-QFLARE-Seq": "1", "X-QFLARE-Auth": "AAAA"}
    bad = [server.client.get("/v1/tasks", headers=forged).status_code for _ in range(4)]
    assert bad == [401, 401, 429, 429]
    assert {dev.poll(session).status_code for _ in range(15)} == {204}


def test_per_device_rate_is_its_own(start_server):
    server = start_server(clock=FakeClock(), rate_per_ip=1000.0, rate_per_device=2.0)
    dev = server.enrolled()
    session = dev.open_session()
    assert [dev.poll(session).status_code for _ in range(4)] == [204, 204, 429, 429]


def test_handshake_and_result_bodies_are_capped(start_server):
    server = start_server(body_limit_session=2048, body_limit_results=1024)
    dev = server.enrolled()
    session = dev.open_session()
    resp = dev.hello(dev.initiator(), nonce=b"\0" * 4096)
    assert resp.status_code == 413 and code(resp) == "body_too_large"
    frame = SealedFrame(session_id=session.id, seq=1, ciphertext=b"\0" * 2048)
    headers = MSGPACK | {"X-QFLARE-Session": session.id}
    resp = server.client.post("/v1/results", content=encode(frame), headers=headers)
    assert resp.status_code == 413 and code(resp) == "body_too_large"


def test_a_result_needs_a_live_session_before_its_body_is_read(start_server):
    server = start_server()
    frame = encode(SealedFrame(session_id="0" * 32, seq=1, ciphertext=b"\0" * 64))
    resp = server.client.post("/v1/results", content=frame, headers=MSGPACK)
    assert resp.status_code == 422  # no X-QFLARE-Session header
    unread = _Unread(60 * 1024 * 1024)
    headers = MSGPACK | {"X-QFLARE-Session": "0" * 32, "content-length": str(unread.size)}
    resp = server.client.post("/v1/results", content=unread, headers=headers)
    assert resp.status_code == 401
    assert unread.sent <= 2 * _Unread.CHUNK, "the server read a body nobody vouched for"


class _Unread:
    """A 60 MB body produced lazily, remembering how much the server pulled."""

    CHUNK = 64 * 1024

    def __init__(self, size: int) -> None:
        self.size, self.sent = size, 0

    def __iter__(self):
        while self.sent < self.size:
            self.sent += self.CHUNK
            yield b"\0" * self.CHUNK


def test_the_result_limit_follows_the_model(start_server):
    server = start_server(max_clients=10)
    dim = server.ctx.models.latest()[1].size
    expected = result_body_limit(dim, 10, server.ctx.settings.chronos_rounds_per_epoch)
    assert server.ctx.bodies.results == expected < 4 * dim + 2**20


@pytest.mark.parametrize("kind", ["text/plain", "application/json", None])
def test_bodies_must_be_msgpack(server, kind):
    headers = {"content-type": kind} if kind else {}
    resp = server.client.post("/v1/enroll", content=b"\x80", headers=headers)
    assert resp.status_code == 415 and code(resp) == "unsupported_media_type"


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
