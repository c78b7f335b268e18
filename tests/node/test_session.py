"""NodeSession over httpx.MockTransport: handshake, sealed polls, reconnection and backoff."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable

import httpx
import msgspec
import pytest

from qflare.crypto import DeterministicRng, Ed25519Signer, MlDsa65Signer, SignatureScheme
from qflare.node import (
    ConflictError,
    DeviceRecord,
    HttpApi,
    NetworkError,
    NodeFatalError,
    NodeSession,
    NodeStopped,
    RetryPolicy,
    SessionLostError,
)
from qflare.protocol.session import (
    C2S,
    S2C,
    ClientFinished,
    ClientHello,
    SecureChannel,
    SessionResponder,
)
from qflare.protocol.wire import SealedFrame, SecAggStep, SignedResult, Task

PROBLEM = {"Content-Type": "application/problem+json"}
Fault = Callable[[httpx.Request], httpx.Response | None]


def _problem(status: int, code: str) -> httpx.Response:
    return httpx.Response(status, json={"status": status, "code": code}, headers=PROBLEM)


class FakeServer:
    """Just enough of the server: real handshakes and sealed frames, plus injectable faults."""

    def __init__(self, device_key: bytes) -> None:
        self.identity = MlDsa65Signer.generate(DeterministicRng(77))
        self.device_key = device_key
        self.pending: dict[str, SessionResponder] = {}
        self.live: dict[str, SecureChannel] = {}
        self.faults: list[Fault] = []
        self.tasks: list[Task] = []
        self.results: list[SignedResult] = []
        self.paths: list[str] = []
        self.rng = DeterministicRng(5)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if self.faults:
            response = self.faults.pop(0)(request)
            if response is not None:
                return response
        path = request.url.path
        if path == "/v1/sessions":
            return self._hello(request)
        if path.endswith("/confirm"):
            finished = msgspec.msgpack.decode(request.content, type=ClientFinished)
            self.live[finished.session_id] = self.pending.pop(finished.session_id).confirm(finished)
            return httpx.Response(204)
        if path == "/v1/tasks":
            return self._poll(request)
        return self._result(request)

    def _hello(self, request: httpx.Request) -> httpx.Response:
        hello = msgspec.msgpack.decode(request.content, type=ClientHello)
        responder = SessionResponder(self.identity, self.rng, 3600.0, SignatureScheme.ED25519)
        reply = responder.respond(hello, self.device_key, now=hello.timestamp)
        self.pending[reply.session_id] = responder
        return httpx.Response(201, content=msgspec.msgpack.encode(reply))

    def _channel(self, session_id: str) -> SecureChannel | None:
        return self.live.get(session_id)

    def _poll(self, request: httpx.Request) -> httpx.Response:
        channel = self._channel(request.headers["x-qflare-session"])
        if channel is None:
            return _problem(401, "unexpected_message")
        tag = base64.b64decode(request.headers["x-qflare-auth"])
        channel.open(int(request.headers["x-qflare-seq"]), tag, now=0.0, direction=C2S)
        if not self.tasks:
            return httpx.Response(204)
        seq, ct = channel.seal(msgspec.msgpack.encode(self.tasks.pop(0)), now=0.0, direction=S2C)
        frame = SealedFrame(session_id=channel.session_id, seq=seq, ciphertext=ct)
        return httpx.Response(200, content=msgspec.msgpack.encode(frame))

    def _result(self, request: httpx.Request) -> httpx.Response:
        frame = msgspec.msgpack.decode(request.content, type=SealedFrame)
        channel = self._channel(frame.session_id)
        if channel is None:
            return _problem(401, "unexpected_message")
        plain = channel.open(frame.seq, frame.ciphertext, now=0.0, direction=C2S)
        self.results.append(msgspec.msgpack.decode(plain, type=SignedResult))
        return httpx.Response(202)


def _network_error(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("refused", request=request)


def _status(status: int, code: str = "") -> Fault:
    return lambda _request: _problem(status, code)


@pytest.fixture
def setup():
    signer = Ed25519Signer.generate(DeterministicRng(3))
    server = FakeServer(signer.public_key)
    device = DeviceRecord("dev", "http://server.test", server.identity.public_key, "mldsa65")
    sleeps: list[float] = []
    now = [1000.0]
    api = HttpApi("http://server.test", insecure=True, transport=httpx.MockTransport(server))

    def make(policy: RetryPolicy | None = None, stop: threading.Event | None = None) -> NodeSession:
        return NodeSession(
            api,
            device,
            signer,
            rng=DeterministicRng(9),
            clock=lambda: now[0],
            sleep=sleeps.append,
            policy=policy or RetryPolicy(initial_s=1.0, factor=2.0, max_delay_s=5.0, jitter=0.0),
            jitter=lambda: 0.5,
            stop_event=stop,
        )

    yield server, make, sleeps, now, signer
    api.close()


def _result(step: int = 0) -> SignedResult:
    return SignedResult(device_id="dev", round_id=1, step=step, message=b"m", signature=b"s")


def test_handshake_once_then_sealed_polls_and_results(setup):
    server, make, sleeps, _, _ = setup
    session = make()
    server.tasks.append(Task(round_id=3, step=0, body=SecAggStep(message=b"")))
    assert session.poll(1.0) == Task(round_id=3, step=0, body=SecAggStep(message=b""))
    assert session.poll(1.0) is None
    session.send(_result())
    assert server.results == [_result()]
    assert session.handshakes == 1 and sleeps == []


def test_server_restart_forces_a_new_handshake_without_waiting(setup):
    server, make, sleeps, _, _ = setup
    session = make()
    session.poll(0)
    server.live.clear()  # the server restarted: sessions live in its memory only
    session.send(_result())
    assert session.handshakes == 2 and sleeps == [] and len(server.results) == 1


def test_network_errors_back_off_exponentially_up_to_the_cap(setup):
    server, make, sleeps, _, _ = setup
    session = make()
    server.faults = [_network_error] * 5 + [_status(503, "too_many_polls"), _status(429, "")]
    assert session.poll(0) is None
    # the 503 is an answer: the server is back, so the backoff starts over
    assert sleeps == [1.0, 2.0, 4.0, 5.0, 5.0, 1.0, 2.0]


def test_server_errors_alone_back_off_up_to_the_cap(setup):
    server, make, sleeps, _, _ = setup
    server.faults = [_status(503, "database_unavailable")] * 5
    assert make().poll(0) is None
    assert sleeps == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_a_restarted_server_is_reconnected_at_once_not_after_the_grown_delay(setup):
    server, make, sleeps, _, _ = setup
    session = make()
    session.poll(0)
    server.live.clear()  # restarted: sessions are gone, and it was unreachable for a while
    server.faults = [_network_error] * 4
    session.send(_result())
    assert sleeps == [1.0, 2.0, 4.0, 5.0]  # then 401 (an answer): a handshake without waiting
    assert session.handshakes == 2 and len(server.results) == 1


def test_the_announced_step_timeout_caps_the_backoff(setup):
    server, make, sleeps, _, _ = setup
    session = make(RetryPolicy(initial_s=1.0, factor=2.0, max_delay_s=30.0, jitter=0.0))
    server.tasks = [Task(round_id=1, step=1, body=SecAggStep(message=b"x"), step_timeout_s=10.0)]
    assert session.poll(0) is not None
    assert session.backoff_cap_s == 2.5  # a quarter of the step
    server.faults = [_network_error] * 6
    assert session.poll(0) is None
    assert sleeps == [1.0, 2.0, 2.5, 2.5, 2.5, 2.5]


def test_send_once_tries_once(setup):
    server, make, sleeps, _, _ = setup
    session = make()
    server.faults = [_network_error]
    assert session.send_once(_result()) is False
    assert session.send_once(_result()) is True
    assert sleeps == [] and len(server.results) == 1


def test_jitter_scales_delays_down_within_bounds():
    policy = RetryPolicy(initial_s=1.0, factor=3.0, max_delay_s=10.0, jitter=0.5)
    for attempt in range(10):
        base = min(10.0, 3.0**attempt)
        assert policy.delay(attempt, 0.0) == base
        assert base / 2 <= policy.delay(attempt, 0.999) <= base
    assert policy.delay(10_000, 0.0) == 10.0
    with pytest.raises(ValueError):
        RetryPolicy(jitter=1.5)
    with pytest.raises(ValueError):
        RetryPolicy(initial_s=5.0, max_delay_s=1.0)


def test_bounded_attempts_raise_the_last_error(setup):
    server, make, sleeps, _, _ = setup
    session = make(RetryPolicy(initial_s=0.1, max_delay_s=1.0, jitter=0.0, max_attempts=3))
    server.faults = [_network_error] * 3
    with pytest.raises(NetworkError):
        session.poll(0)
    assert sleeps == [0.1, 0.2]


@pytest.mark.parametrize("fault", [_status(401, "device_unknown"), _status(403, "device_revoked")])
def test_unknown_or_revoked_device_is_fatal(setup, fault):
    server, make, sleeps, _, _ = setup
    server.faults = [fault]
    with pytest.raises(NodeFatalError):
        make().poll(0)
    assert sleeps == []


def test_server_with_another_key_is_never_trusted(setup):
    server, make, _sleeps, _, _ = setup
    server.identity = MlDsa65Signer.generate(DeterministicRng(1234))  # not the pinned key
    session = make(RetryPolicy(initial_s=0.1, max_delay_s=1.0, jitter=0.0, max_attempts=2))
    with pytest.raises(SessionLostError, match="handshake failed"):
        session.poll(0)
    assert session.handshakes == 0


def test_stale_result_conflict_is_not_retried(setup):
    server, make, sleeps, _, _ = setup
    session = make()
    session.poll(0)
    server.faults = [_status(409, "unexpected_message")]
    with pytest.raises(ConflictError):
        session.send(_result())
    assert sleeps == [] and server.results == []


def test_session_is_renewed_before_it_expires(setup):
    _server, make, _, now, _ = setup
    session = make()
    session.poll(0)
    now[0] += 3600.0 - 10.0  # within the renewal margin
    session.poll(0)
    assert session.handshakes == 2


def test_stop_event_interrupts_retrying(setup):
    server, make, _sleeps, _, _ = setup
    stop = threading.Event()
    stop.set()
    server.faults = [_network_error] * 3
    with pytest.raises(NodeStopped):
        make(stop=stop).poll(0)


def test_tampered_task_frame_drops_the_channel_and_reconnects(setup):
    server, make, sleeps, _, _ = setup
    session = make()
    session.poll(0)

    def forged(request: httpx.Request) -> httpx.Response:
        sid = request.headers["x-qflare-session"]
        frame = SealedFrame(session_id=sid, seq=99, ciphertext=b"x" * 40)
        return httpx.Response(200, content=msgspec.msgpack.encode(frame))

    server.faults = [forged]
    server.tasks.append(Task(round_id=1, step=0, body=SecAggStep(message=b"")))
    assert session.poll(0) == Task(round_id=1, step=0, body=SecAggStep(message=b""))
    assert session.handshakes == 2 and sleeps == []
