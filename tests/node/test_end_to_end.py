"""Real server over loopback HTTP, real nodes: enroll, one secure round, check the exact sum."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from qflare.crypto import DeterministicRng, SignatureScheme, SystemRng
from qflare.fl import torch_threads
from qflare.node import (
    ConflictError,
    ConstantTrainer,
    HttpApi,
    NodeFatalError,
    NodeRunner,
    NodeSession,
    NodeState,
    NodeStopped,
    RunReport,
    TaskTransport,
    TorchTrainer,
    TrainingConfig,
    UnauthorizedError,
    enroll,
)
from qflare.node.enroll import InvalidTokenError
from qflare.node.launch import RunOptions, run_node
from qflare.protocol.quantize import QuantConfig, dequantize
from qflare.protocol.wire import SignedResult, Task
from qflare.store import repos
from qflare.store.db import make_engine, session_factory
from qflare.store.models import ModelVersion, Round
from tests.authority.helpers import make_authority

from .conftest import LiveServer, start_server, stop_server
from .fleet import enroll_node, run_fleet

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


Wrap = Callable[[int, NodeSession], TaskTransport]


def _run_nodes(
    live: LiveServer,
    states: list[NodeState],
    trainers: list[ConstantTrainer],
    wrap: Wrap = lambda _i, session: session,
    stop: threading.Event | None = None,
) -> list[RunReport]:
    def runner(i: int, session: NodeSession) -> NodeRunner:
        transport = wrap(i, session)
        return NodeRunner(
            states[i], transport, trainers[i], DeterministicRng(100 + i), poll_wait=1.0, pause_s=0.1
        )

    reports = run_fleet(live, states, runner, max_rounds=1, timeout=45, stop=stop)
    assert all(r is not None for r in reports), "a node did not finish its round"
    return [r for r in reports if r is not None]


def _wait_for_round(live: LiveServer, timeout: float = 15.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rounds = live.get("/v1/rounds").json()
        if rounds and rounds[0]["state"] in ("COMPLETED", "ABORTED"):
            return dict(rounds[0])
        time.sleep(0.1)
    raise AssertionError("the round did not finish")


def test_three_nodes_complete_a_round_with_the_exact_weighted_sum(
    live_server: LiveServer, tmp_path: Path
) -> None:
    states = [enroll_node(live_server, tmp_path / f"node{i}") for i in range(3)]
    trainers = [ConstantTrainer(seed=7 + i, weight=5 + i) for i in range(3)]

    reports = _run_nodes(live_server, states, trainers)

    assert [r.completed for r in reports] == [1, 1, 1]
    assert all(r.dropped == 0 and r.results_sent == 5 for r in reports)
    view = _wait_for_round(live_server)
    assert view["state"] == "COMPLETED" and view["devices"] == 3

    factory = session_factory(make_engine(live_server.settings.database_url))
    with factory() as db:
        row = db.scalars(select(Round)).one()
        assert row.result is not None
        initial = np.frombuffer(db.get(ModelVersion, 0).weights, dtype=np.float32)
        updated = np.frombuffer(db.get(ModelVersion, 1).weights, dtype=np.float32)
    expected, weight = _check_sum(live_server, row, trainers, initial.size)
    np.testing.assert_allclose(
        updated, initial + expected / weight, rtol=0, atol=1 / _quant(live_server).scale
    )


def _quant(live: LiveServer) -> QuantConfig:
    return QuantConfig(live.settings.clip, 32, live.settings.max_total_weight)


def _check_sum(
    live: LiveServer, row: Round, trainers: list[ConstantTrainer], dim: int
) -> tuple[np.ndarray, int]:
    """The stored ring sum dequantises to sum(weight * delta) over ``trainers``."""
    cfg = _quant(live)
    total, weight = dequantize(np.frombuffer(row.result, dtype=np.uint32), cfg)
    expected = sum(t.weight * t.delta(dim, row.id).astype(np.float64) for t in trainers)
    assert weight == sum(t.weight for t in trainers)
    np.testing.assert_allclose(total, expected, rtol=0, atol=weight / cfg.scale + 1e-9)
    return expected, weight


def _stored_round(live: LiveServer) -> tuple[Round, int]:
    factory = session_factory(make_engine(live.settings.database_url))
    with factory() as db:
        row = db.scalars(select(Round)).one()
        dim = np.frombuffer(db.get(ModelVersion, 0).weights, dtype=np.float32).size
    return row, dim


class _QuitAfter:
    """A node that goes silent (process killed) after ``sends`` results."""

    def __init__(self, inner: TaskTransport, sends: int) -> None:
        self.inner, self.left = inner, sends

    def poll(self, wait: float) -> Task | None:
        if self.left <= 0:
            raise NodeStopped("killed")
        return self.inner.poll(wait)

    def send(self, result: SignedResult) -> None:
        self.inner.send(result)
        self.left -= 1


def test_a_node_dying_after_sharing_keys_is_unmasked_away(tmp_path: Path) -> None:
    live = start_server(tmp_path, min_clients=4, k=4, t=3, step_timeout_s=1.5)
    try:
        states = [enroll_node(live, tmp_path / f"node{i}") for i in range(4)]
        trainers = [ConstantTrainer(seed=20 + i, weight=2 + i) for i in range(4)]
        wrap: Wrap = lambda i, s: _QuitAfter(s, 2) if i == 3 else s  # noqa: E731
        reports = _run_nodes(live, states, trainers, wrap)
        assert [r.completed for r in reports] == [1, 1, 1, 0]
        view = _wait_for_round(live)
        assert view["state"] == "COMPLETED"
        row, dim = _stored_round(live)
        _check_sum(live, row, trainers[:3], dim)
    finally:
        stop_server(live)


class _PauseAfter:
    """Blocks after ``sends`` results until the test says go (to restart the server meanwhile)."""

    def __init__(self, sends: int) -> None:
        self.inner: TaskTransport | None = None
        self.left = sends
        self.reached, self.resume = threading.Event(), threading.Event()

    def poll(self, wait: float) -> Task | None:
        assert self.inner is not None
        return self.inner.poll(wait)

    def send(self, result: SignedResult) -> None:
        assert self.inner is not None
        self.inner.send(result)
        self.left -= 1
        if self.left == 0:
            self.reached.set()
            assert self.resume.wait(20)


def test_nodes_reconnect_and_finish_the_round_after_a_server_restart(tmp_path: Path) -> None:
    live = start_server(tmp_path, step_timeout_s=8.0)
    servers = [live]
    pause = _PauseAfter(sends=2)  # node 0 stops after R1 while the server restarts
    sessions: list[NodeSession] = []

    def wrap(i: int, session: NodeSession) -> TaskTransport:
        sessions.append(session)
        if i == 0:
            pause.inner = session
            return pause
        return session

    def restart() -> None:
        assert pause.reached.wait(20)
        stop_server(live)
        port = int(live.url.rsplit(":", 1)[1])
        servers.append(start_server(tmp_path, port=port, step_timeout_s=8.0))
        pause.resume.set()

    try:
        states = [enroll_node(live, tmp_path / f"node{i}") for i in range(3)]
        trainers = [ConstantTrainer(seed=30 + i, weight=4) for i in range(3)]
        restarter = threading.Thread(target=restart)
        restarter.start()
        reports = _run_nodes(live, states, trainers, wrap)
        restarter.join(30)
        assert len(servers) == 2, "the server was not restarted"
        assert [r.completed for r in reports] == [1, 1, 1]
        assert all(s.handshakes >= 2 for s in sessions)  # every node re-established its session
        assert _wait_for_round(servers[1])["state"] == "COMPLETED"
        row, dim = _stored_round(servers[1])
        _check_sum(servers[1], row, trainers, dim)
    finally:
        stop_server(servers[-1])


class _SendTwiceAt:
    """Re-sends the identical result of ``step`` (a retry after a lost 202), then pauses."""

    def __init__(self, inner: TaskTransport, step: int, pause: _PauseAfter) -> None:
        self.inner, self.step, self.pause = inner, step, pause

    def poll(self, wait: float) -> Task | None:
        return self.inner.poll(wait)

    def send(self, result: SignedResult) -> None:
        self.inner.send(result)
        if result.step == self.step:
            self.inner.send(result)
            self.pause.reached.set()
            assert self.pause.resume.wait(20)


class _SlowAt:
    def __init__(self, inner: TaskTransport, step: int) -> None:
        self.inner, self.step = inner, step

    def poll(self, wait: float) -> Task | None:
        return self.inner.poll(wait)

    def send(self, result: SignedResult) -> None:
        if result.step == self.step:
            time.sleep(0.5)  # let node 0's duplicate land while the step is still open
        self.inner.send(result)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_identical_masked_input_retry_survives_a_server_restart(tmp_path: Path) -> None:
    live = start_server(tmp_path, step_timeout_s=8.0)
    servers, pause, stop = [live], _PauseAfter(sends=0), threading.Event()

    def wrap(i: int, session: NodeSession) -> TaskTransport:
        return _SendTwiceAt(session, 2, pause) if i == 0 else _SlowAt(session, 2)

    def restart() -> None:
        assert pause.reached.wait(20)
        time.sleep(0.8)  # the other masked inputs arrive; the round moves to R3
        stop_server(live)
        try:
            port = int(live.url.rsplit(":", 1)[1])
            servers.append(start_server(tmp_path, port=port, step_timeout_s=8.0))
        except RuntimeError:
            stop.set()  # the server cannot come back: stop the nodes
        finally:
            pause.resume.set()

    try:
        states = [enroll_node(live, tmp_path / f"node{i}") for i in range(3)]
        trainers = [ConstantTrainer(seed=50 + i) for i in range(3)]
        restarter = threading.Thread(target=restart)
        restarter.start()
        _run_nodes(live, states, trainers, wrap, stop)
        restarter.join(30)
        assert len(servers) == 2, "the server did not restart"
        assert _wait_for_round(servers[1])["state"] == "COMPLETED"
        row, dim = _stored_round(servers[1])
        _check_sum(servers[1], row, trainers, dim)
    finally:
        stop_server(servers[-1])


def test_a_revoked_device_stops_with_a_fatal_error(live_server: LiveServer, tmp_path: Path) -> None:
    state = enroll_node(live_server, tmp_path / "node")
    factory = session_factory(make_engine(live_server.settings.database_url))
    with factory() as db, db.begin():
        assert repos.revoke_device(db, state.require_device().device_id, time.time())
    api = HttpApi(live_server.url, insecure=True)
    session = NodeSession(
        api,
        state.require_device(),
        state.signer(),
        rng=SystemRng(),
        clock=time.time,
        sleep=time.sleep,
    )
    runner = NodeRunner(state, session, ConstantTrainer(1), SystemRng(), poll_wait=0.5)
    with pytest.raises(NodeFatalError, match="device_revoked"):
        runner.run(max_rounds=1)
    session.close()


def test_registry_is_persisted_and_a_second_enrollment_is_refused(
    live_server: LiveServer, tmp_path: Path
) -> None:
    root = tmp_path / "node"
    state = enroll_node(live_server, root)
    with HttpApi(live_server.url, insecure=True) as api:
        with pytest.raises(Exception, match="already enrolled"):
            enroll(
                root, api, live_server.new_token(), scheme=SignatureScheme.ED25519, rng=SystemRng()
            )
        other = tmp_path / "other"
        token = live_server.new_token()
        enroll(other, api, token, scheme=SignatureScheme.ED25519, rng=SystemRng())
        with pytest.raises(ConflictError) as used:
            enroll(tmp_path / "third", api, token, scheme=SignatureScheme.ED25519, rng=SystemRng())
        assert used.value.code == "token_used"
        with pytest.raises(InvalidTokenError):
            enroll(tmp_path / "4", api, "qft_nope", scheme=SignatureScheme.ED25519, rng=SystemRng())
        with pytest.raises(UnauthorizedError) as forged:
            rogue = make_authority(tmp_path / "rogue")
            enroll(
                tmp_path / "5", api, rogue.token(), scheme=SignatureScheme.ED25519, rng=SystemRng()
            )
        assert forged.value.code == "wrong_authority"
    assert state.require_device().server_url == live_server.url


def test_real_local_training_on_digits_shards(live_server: LiveServer, tmp_path: Path) -> None:
    roots = [tmp_path / f"node{i}" for i in range(3)]
    for root in roots:
        enroll_node(live_server, root)
    configs = [
        TrainingConfig(dataset="digits", partition="iid", shard=i, shards=3, lr=0.05)
        for i in range(3)
    ]
    stop = threading.Event()
    reports: list[RunReport] = []
    threads = [
        threading.Thread(
            target=lambda r, c: reports.append(
                run_node(
                    RunOptions(state_dir=r, insecure=True, training=c, max_rounds=1, poll_wait=1),
                    stop,
                )
            ),
            args=(root, cfg),
        )
        for root, cfg in zip(roots, configs, strict=True)
    ]
    with torch_threads(1):  # three trainers in one process: avoid oversubscribing the cores
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    stop.set()
    assert sorted(r.completed for r in reports) == [1, 1, 1]
    assert _wait_for_round(live_server)["state"] == "COMPLETED"

    factory = session_factory(make_engine(live_server.settings.database_url))
    with factory() as db:
        initial = np.frombuffer(db.get(ModelVersion, 0).weights, dtype=np.float32)
        updated = np.frombuffer(db.get(ModelVersion, 1).weights, dtype=np.float32)
    total, weight = np.zeros(initial.size), 0
    for cfg in configs:  # local training is reproducible: recompute each node's delta
        delta, examples = TorchTrainer(cfg).train(initial.copy(), round_id=1)
        total += examples * delta.astype(np.float64)
        weight += examples
    np.testing.assert_allclose(
        updated, initial + total / weight, atol=2 / _quant(live_server).scale
    )
