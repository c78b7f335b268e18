"""Server restarts at every protocol step: in-process crashes, and a live server restarted under
nodes that back off. Every test ends with each stored round checked against its exact sum."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from qflare.crypto import DeterministicRng, SignatureScheme, SystemRng
from qflare.node import (
    ConstantTrainer,
    HttpApi,
    NodeRunner,
    NodeSession,
    NodeState,
    RetryPolicy,
    RunReport,
    TaskTransport,
    enroll,
)
from qflare.protocol.quantize import QuantConfig
from qflare.protocol.wire import SignedResult, Task
from qflare.server.coordinator import Coordinator
from qflare.store.db import make_engine, session_factory
from qflare.store.models import Round
from tests.node.conftest import LiveServer, start_server, stop_server

from .harness import Federation
from .helpers import assert_rounds_exact

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SPARSE = {"k": 3, "t": 2}  # five nodes on a sparse graph: the seed step is one of the steps
STEPS = ("R0_ADVERTISE_KEYS", "R0_REVEAL_SEED", "R1_SHARE_KEYS", "R2_MASKED_INPUT")
STEPS += ("R3_CONSISTENCY", "R4_UNMASK")


def test_a_crash_after_every_message_with_its_answer_lost_and_resent(tmp_path):
    """SIGKILL right after a commit, before the 202 left: the node re-sends the same answer to
    a server rebuilt from its log, at every step (masked inputs included)."""
    clean = Federation(tmp_path / "clean", n=5, settings=SPARSE)
    clean.run()
    fed = Federation(tmp_path / "crash", n=5, settings=SPARSE)
    seen_states: set[str] = set()
    fed.coord.tick()
    for _ in range(100):
        for node in fed.nodes:
            task = fed.coord.task_for(node.device_id)
            if task is None:
                continue
            seen_states.add(fed.coord.live.machine.state.value)
            answer = node.answer_to(task)
            fed.coord.submit(node.device_id, answer, node.signer.public_key)
            if fed.coord.live is not None:
                fed.crash()
                _resend(fed.coord, node.device_id, answer, node.signer.public_key)
        if fed.closed():
            break
        fed.clock.now += 0.1
        fed.coord.tick()
    assert seen_states == set(STEPS)
    (row,) = fed.rows()
    assert row.state == "COMPLETED" and row.result == clean.rows()[0].result
    assert fed.check() == [1]


def _resend(coord: Coordinator, device: str, answer: SignedResult, key: bytes) -> None:
    """A re-sent answer is accepted again or refused as stale (409), never as a bad message."""
    live = coord.live
    if live is None or (answer.round_id, answer.step) != (live.round_id, live.step):
        return  # the step closed meanwhile: the node's retry would get 409 and move on
    coord.submit(device, answer, key)


# ---- a live server restarted under running nodes ------------------------------------------------


class Gate:
    """Holds a node's results of the given steps until each step is released."""

    def __init__(self, steps: range) -> None:
        self.inner: TaskTransport | None = None
        self.held = {step: threading.Event() for step in steps}

    def poll(self, wait: float) -> Task | None:
        assert self.inner is not None
        return self.inner.poll(wait)

    def send(self, result: SignedResult) -> None:
        assert self.inner is not None
        if result.step in self.held:
            self.held[result.step].wait(60)
        self.inner.send(result)

    def release(self) -> None:
        for event in self.held.values():
            event.set()


def _enroll(live: LiveServer, root: Path) -> NodeState:
    with HttpApi(live.url, insecure=True) as api:
        enroll(root, api, live.new_token(), scheme=SignatureScheme.ED25519, rng=SystemRng())
    return NodeState.open(root)


def _coordinator(live: LiveServer) -> Coordinator:
    coord = live.server.config.app.state.ctx.coordinator
    assert isinstance(coord, Coordinator)
    return coord


def _wait(what: str, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _node(
    live: LiveServer, state: NodeState, trainer: ConstantTrainer, gate: Gate, seed: int
) -> Callable[[threading.Event], RunReport]:
    def run(stop: threading.Event) -> RunReport:
        session = NodeSession(
            HttpApi(live.url, insecure=True),
            state.require_device(),
            state.signer(),
            rng=SystemRng(),
            clock=time.time,
            sleep=stop.wait,
            policy=RetryPolicy(),  # the defaults: 0.5 s doubling, capped by the task's step
            stop_event=stop,
        )
        gate.inner = session
        runner = NodeRunner(state, gate, trainer, DeterministicRng(seed), poll_wait=1.0)
        try:
            return runner.run(max_rounds=1, stop_event=stop)
        finally:
            session.close()

    return run


def test_a_live_server_restarted_at_every_step_loses_nobody(tmp_path: Path) -> None:
    """Stop (as SIGTERM does) and restart the server once in each of the six steps of a
    SecAgg+ round, node 0's answer accepted and the others' held; the nodes reconnect with
    their default backoff (capped by the announced step timeout) and nobody drops."""
    settings = {"model": "vector:16", "min_clients": 5, "max_clients": 5, "step_timeout_s": 8.0}
    settings |= {"max_total_weight": 1000, **SPARSE}
    live = start_server(tmp_path, **settings)
    port = int(live.url.rsplit(":", 1)[1])
    states = [_enroll(live, tmp_path / f"node{i}") for i in range(5)]
    trainers = [ConstantTrainer(seed=60 + i, weight=2 + i) for i in range(5)]
    gates = [Gate(range(0) if i == 0 else range(len(STEPS))) for i in range(5)]
    stop = threading.Event()
    reports: list[RunReport] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            reports.append(_node(live, states[i], trainers[i], gates[i], 300 + i)(stop))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    try:
        for step, state in enumerate(STEPS):
            coord = _coordinator(live)
            _wait(
                f"node 0's answer in {state}",
                lambda c=coord, s=state: (
                    c.live is not None  # type: ignore[misc]
                    and c.live.machine.state.value == s
                    and 0 not in c.live.machine.pending()
                ),
            )
            stop_server(live)
            live = start_server(tmp_path, port=port, authority=live.authority, **settings)
            resumed = _coordinator(live).live
            assert resumed is not None and resumed.machine.state.value == state
            for gate in gates:
                gate.held[step].set() if step in gate.held else None
        for t in threads:
            t.join(timeout=60)
    finally:
        stop.set()
        for gate in gates:
            gate.release()
        stop_server(live)
    assert not errors, errors
    assert len(reports) == 5 and all(r.completed == 1 and r.dropped == 0 for r in reports)
    trainer_of = {s.require_device().device_id: t for s, t in zip(states, trainers, strict=True)}
    url = live.settings.database_url
    assert assert_rounds_exact(url, trainer_of.__getitem__, QuantConfig(1.0, 32, 1000), 16) == [1]
    with session_factory(make_engine(url))() as db:
        assert db.get(Round, 1).survivors == "[0, 1, 2, 3, 4]"


def test_a_draining_server_lets_no_deadline_pass(tmp_path):
    """SIGTERM stops the clock at once: the requests uvicorn still finishes cannot be followed
    by a deadline that drops nodes (or aborts the round) the next process would resume."""
    fed = Federation(tmp_path)
    fed.coord.tick()
    fed.step(fed.nodes[:2])
    fed.coord.drain()
    fed.clock.now += 100  # far past the deadline
    fed.coord.tick()
    fed.step(fed.nodes[2:3])  # a result still arriving is accepted
    assert fed.coord.live is not None and fed.coord.live.step == 0
    fed.crash()
    assert fed.coord.live.machine.pending() == frozenset({3})
    fed.run()
    assert fed.check() == [1] and fed.rows()[0].survivors == "[0, 1, 2, 3]"
