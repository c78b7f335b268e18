"""NodeRunner against an in-memory hub: exact sums, idempotent re-sends, drops, stop conditions."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import msgspec
import numpy as np
import pytest

from qflare.crypto import DeterministicRng, SignatureScheme, verify_signature
from qflare.node import (
    ConflictError,
    ConstantTrainer,
    NetworkError,
    NodeFatalError,
    NodeRunner,
    NodeState,
    ServerError,
)
from qflare.node.state import IDENTITY_FILE, KEM_FILE
from qflare.protocol import messages as m
from qflare.protocol.quantize import QuantConfig, dequantize
from qflare.protocol.secagg import State
from qflare.protocol.wire import (
    UPDATE_CONTEXT,
    ChronosStep,
    ChronosTask,
    SecAggStep,
    SignedResult,
    Task,
    result_transcript,
)

from .fakes import FakeHub, FakeTransport, make_state

N = 3


def _cohort(tmp_path: Path, n: int = N, **hub_args: object):
    states = [make_state(tmp_path / f"n{i}", f"dev{i}", seed=i) for i in range(n)]
    identities = {i: s.signer().public_key for i, s in enumerate(states)}
    hub = FakeHub(identities, {f"dev{i}": i for i in range(n)}, **hub_args)  # type: ignore[arg-type]
    trainers = [ConstantTrainer(seed=40 + i, weight=3 + i) for i in range(n)]
    transports = [FakeTransport(hub, f"dev{i}") for i in range(n)]
    runners = [
        NodeRunner(s, tr, trn, DeterministicRng(i), sleep=lambda _s: None)
        for i, (s, tr, trn) in enumerate(zip(states, transports, trainers, strict=True))
    ]
    return hub, states, trainers, transports, runners


def _drive(hub: FakeHub, runners: list[NodeRunner], limit: int = 50) -> None:
    for _ in range(limit):
        if hub.machine.state in (State.COMPLETED, State.ABORTED):
            return
        progressed = [r.run_once() for r in runners]
        if not any(progressed):
            hub.advance()  # the step deadline: silent nodes become dropouts
    raise AssertionError("round did not finish")


def test_round_gives_exact_weighted_sum_and_signed_results(tmp_path):
    hub, states, trainers, transports, runners = _cohort(tmp_path)
    _drive(hub, runners)

    assert hub.machine.state is State.COMPLETED
    total, weight = dequantize(hub.machine.result, QuantConfig(1.0, 32, hub.max_total_weight))
    expected = sum(t.weight * t.delta(hub.dim, 1).astype(np.float64) for t in trainers)
    assert weight == sum(t.weight for t in trainers)
    scale = QuantConfig(1.0, 32, hub.max_total_weight).scale
    np.testing.assert_allclose(total, expected, atol=weight / scale)
    assert [r.report.completed for r in runners] == [1] * N
    assert all(len(t.sent) == 5 for t in transports)
    for i, t in enumerate(transports):
        assert [res.step for res in t.sent] == [0, 1, 2, 3, 4]
        for res in t.sent:
            assert isinstance(res, SignedResult) and res.device_id == f"dev{i}"
            verify_signature(
                SignatureScheme.ED25519,
                states[i].signer().public_key,
                res.signature,
                result_transcript(res.device_id, res.round_id, res.step, res.message),
                context=UPDATE_CONTEXT,
            )


def test_lost_answer_is_resent_identically_and_never_recomputed(tmp_path):
    hub, _, _, _, runners = _cohort(tmp_path)
    task = hub.task_for("dev0")
    first = runners[0].handle(task)
    again = runners[0].handle(task)
    assert first is not None and again is first  # same signed bytes: no second set of keys
    advert = m.decode_client(first.message)
    assert isinstance(advert, m.AdvertiseKeys) and advert.sender == 0


def test_claimed_round_is_persisted_and_refused_after_restart(tmp_path):
    hub, states, trainers, _, runners = _cohort(tmp_path)
    task = hub.task_for("dev0")
    assert runners[0].handle(task) is not None
    rounds = json.loads((states[0].root / "rounds.json").read_text())
    assert rounds == [["qflare", 1]]

    restarted = NodeRunner(
        NodeState.open(states[0].root), FakeTransport(hub, "dev0"), trainers[0], DeterministicRng(9)
    )
    assert restarted.handle(task) is None
    assert restarted.report.dropped == 1


def test_tasks_of_unknown_rounds_and_stale_steps_are_ignored(tmp_path):
    hub, _, _, _, runners = _cohort(tmp_path)
    runner = runners[0]
    assert runner.handle(Task(round_id=7, step=2, body=SecAggStep(message=b"\x90"))) is None
    assert runner.report.dropped == 0
    start = hub.task_for("dev0")
    assert runner.handle(start) is not None
    assert (
        runner.handle(Task(round_id=2, step=0, body=SecAggStep(message=b"x"))) is None
    )  # no start
    for r in runners[1:]:
        r.run_once()
    assert runner.run_once()  # delivers the step-0 answer computed above
    assert runner.run_once()  # answers step 1
    assert runner.handle(start) is None  # a stale step 0 neither re-answers nor drops
    assert runner.report.dropped == 0 and runner.report.results_sent == 2


def test_a_task_no_participant_handles_is_declined_cleanly(tmp_path, caplog):
    hub, _, _, _, runners = _cohort(tmp_path)
    runner = runners[0]
    runner.participants = [p for p in runner.participants if not p.handles(hub_chronos_body())]
    task = Task(round_id=1, step=0, body=hub_chronos_body())
    with caplog.at_level(logging.WARNING, logger="qflare.node"):
        assert runner.handle(task) is None
    assert any(r.getMessage() == "task declined: no participant for it" for r in caplog.records)
    assert runner.report.dropped == 0 and runner.report.results_sent == 0
    assert runner.handle(hub.task_for("dev0")) is not None  # SecAgg rounds still work


class _Plugged:
    """A stand-in for another protocol's participant: answers every CHRONOS body once."""

    def __init__(self, results, report):
        self.results, self.report, self.delivered_results = results, report, []

    def handles(self, body):
        return isinstance(body, ChronosTask)

    def handle(self, task):
        return self.results.sign(task.round_id, task.step, b"plugged")

    def delivered(self, result):
        self.delivered_results.append(result)
        self.report.completed += 1
        return True

    def rejected(self, result, why):
        self.report.drop(result.round_id, result.step, why)

    def position(self):
        return None

    def abandon(self, why):
        pass


def test_a_plugged_in_participant_answers_its_bodies_first(tmp_path):
    state = make_state(tmp_path / "n0", "dev0", seed=0)
    task = Task(round_id=4, step=0, body=hub_chronos_body())
    runner = NodeRunner(
        state,
        _ScriptedTransport([task]),
        ConstantTrainer(1),
        DeterministicRng(1),
        sleep=lambda _s: None,
        participants=[_Plugged],
    )
    assert runner.run(max_rounds=1).completed == 1
    (plugged,) = [p for p in runner.participants if isinstance(p, _Plugged)]
    (result,) = plugged.delivered_results
    assert (result.round_id, result.step, result.message) == (4, 0, b"plugged")
    assert result.device_id == "dev0"


def hub_chronos_body() -> ChronosTask:
    return ChronosTask(epoch=1, part=ChronosStep(message=b"\x90"))


@pytest.mark.parametrize(
    "message",
    [
        b"not msgpack",
        m.encode(m.ShareRelay(round_id=1, recipient=0, ciphertexts={}, commitments={})),
    ],
)
def test_garbage_or_unexpected_server_message_drops_the_round(tmp_path, message, caplog):
    hub, _, _, _, runners = _cohort(tmp_path)
    runner = runners[0]
    runner.handle(hub.task_for("dev0"))
    with caplog.at_level(logging.WARNING, logger="qflare.node"):
        assert runner.handle(Task(round_id=1, step=1, body=SecAggStep(message=message))) is None
    assert runner.report.dropped == 1
    assert any(r.getMessage() == "round dropped" for r in caplog.records)
    # Further tasks of that round are no longer answered.
    assert runner.handle(Task(round_id=1, step=2, body=SecAggStep(message=message))) is None


def test_skipped_step_drops_the_round(tmp_path):
    hub, _, _, _, runners = _cohort(tmp_path)
    runners[0].handle(hub.task_for("dev0"))
    assert runners[0].handle(Task(round_id=1, step=3, body=SecAggStep(message=b"\x90"))) is None
    assert runners[0].report.dropped == 1


class _WrongShape:
    def train(self, weights, round_id):
        return np.zeros(weights.size + 1, dtype=np.float32), 1


class _NotFinite:
    def train(self, weights, round_id):
        return np.full(weights.size, np.nan, dtype=np.float32), 1


class _TooHeavy:
    def train(self, weights, round_id):
        return np.zeros(weights.size, dtype=np.float32), 10**9


def test_a_weight_above_the_cohorts_share_of_the_headroom_is_capped(tmp_path):
    """Each weight alone fitting is not enough: the sum must fit, so each is capped at W // n."""
    hub, states, _, transports, runners = _cohort(tmp_path)
    runners[0] = NodeRunner(states[0], transports[0], _TooHeavy(), DeterministicRng(77))
    _drive(hub, runners)
    assert hub.machine.state is State.COMPLETED
    _, weight = dequantize(hub.machine.result, QuantConfig(1.0, 32, hub.max_total_weight))
    assert weight == hub.max_total_weight // N + 4 + 5  # capped, plus the others' weights 4 and 5


@pytest.mark.parametrize("trainer", [_WrongShape(), _NotFinite()])
def test_bad_local_update_drops_without_claiming_the_round(tmp_path, trainer):
    hub, states, _, transports, _ = _cohort(tmp_path)
    runner = NodeRunner(states[0], transports[0], trainer, DeterministicRng(1))
    assert runner.handle(hub.task_for("dev0")) is None
    assert runner.report.dropped == 1
    assert not (states[0].root / "rounds.json").exists()


def test_dropout_after_sharing_keys_still_gives_the_survivors_sum(tmp_path):
    hub, _, trainers, _, runners = _cohort(tmp_path, n=4, t=3)
    for _ in range(2):  # steps 0 and 1: everyone answers
        for r in runners:
            assert r.run_once()
    _drive(hub, runners[:3])  # node 3 goes silent before its masked input
    assert hub.machine.state is State.COMPLETED
    assert hub.machine.survivors == (0, 1, 2)
    cfg = QuantConfig(1.0, 32, hub.max_total_weight)
    total, weight = dequantize(hub.machine.result, cfg)
    expected = sum(t.weight * t.delta(hub.dim, 1).astype(np.float64) for t in trainers[:3])
    assert weight == sum(t.weight for t in trainers[:3])
    np.testing.assert_allclose(total, expected, atol=weight / cfg.scale)


class _ScriptedTransport:
    def __init__(self, polls, send_error=None):
        self.polls, self.send_error, self.sent = list(polls), send_error, []

    def poll(self, wait):
        item = self.polls.pop(0) if self.polls else None
        if isinstance(item, BaseException):
            raise item
        return item

    def send(self, result):
        if self.send_error is not None:
            raise self.send_error
        self.sent.append(result)


def test_run_pauses_after_transport_errors_and_stops_on_fatal(tmp_path):
    state = make_state(tmp_path / "n", "dev0")
    sleeps: list[float] = []
    transport = _ScriptedTransport([NetworkError("down"), None, NodeFatalError("revoked")])
    runner = NodeRunner(
        state, transport, ConstantTrainer(1), DeterministicRng(1), sleep=sleeps.append, pause_s=0.7
    )
    with pytest.raises(NodeFatalError):
        runner.run()
    assert sleeps == [0.7]


def test_run_honours_stop_event_and_max_rounds(tmp_path):
    state = make_state(tmp_path / "n", "dev0")
    stop = threading.Event()
    stop.set()
    runner = NodeRunner(state, _ScriptedTransport([]), ConstantTrainer(1), DeterministicRng(1))
    assert runner.run(stop_event=stop).rounds == 0
    assert runner.run(max_rounds=0).rounds == 0


def test_stale_conflict_keeps_going_but_a_rejected_result_drops(tmp_path):
    hub, states, trainers, _, _ = _cohort(tmp_path)
    task = hub.task_for("dev0")
    stale = _ScriptedTransport([task], send_error=ConflictError(409, "unexpected_message", "late"))
    runner = NodeRunner(states[0], stale, trainers[0], DeterministicRng(1), sleep=lambda _s: None)
    assert runner.run_once() and runner.report.dropped == 0

    task1 = hub.task_for("dev1")
    rejected = _ScriptedTransport([task1], send_error=ServerError(400, "malformed_message", "no"))
    runner1 = NodeRunner(states[1], rejected, trainers[1], DeterministicRng(2))
    runner1.run_once()
    assert runner1.report.dropped == 1


def test_logs_carry_no_secret_material(tmp_path, caplog):
    hub, states, _, transports, runners = _cohort(tmp_path)
    with caplog.at_level(logging.DEBUG, logger="qflare"):
        _drive(hub, runners)
    secrets = []
    for s in states:
        secrets += [(s.root / IDENTITY_FILE).read_bytes(), (s.root / KEM_FILE).read_bytes()]
    uploads = [r.message for t in transports for r in t.sent]
    standard = set(vars(logging.makeLogRecord({})))
    assert caplog.records
    for record in caplog.records:
        extras = {k: v for k, v in vars(record).items() if k not in standard}
        for value in extras.values():
            assert isinstance(value, str | int | float | bool | type(None)), (record.msg, value)
        text = record.getMessage() + msgspec.json.encode(extras).decode()
        for blob in secrets + uploads:
            assert blob.hex() not in text and blob[:16].hex() not in text


def test_max_rounds_of_node_run_count_completed_rounds_only(tmp_path):
    """Issue 15: a dropped round used up a node's --max-rounds; the server then lacked nodes
    for the round it still had to complete. ``completed_only`` (``qflare node run``) fixes it."""
    hub, states, trainers, _, _ = _cohort(tmp_path)
    rejected = ServerError(400, "malformed_message", "no")
    for i, completed_only in ((0, False), (1, True)):
        task = hub.task_for(f"dev{i}")
        script = _ScriptedTransport([task, None, NodeFatalError("stop here")], rejected)
        runner = NodeRunner(states[i], script, trainers[i], DeterministicRng(i), sleep=lambda _: 0)
        if completed_only:
            with pytest.raises(NodeFatalError):  # it went on polling after the dropped round
                runner.run(max_rounds=1, completed_only=True)
            assert runner.report.dropped == 1 and not script.polls
        else:
            assert runner.run(max_rounds=1).dropped == 1
            assert len(script.polls) == 2  # it stopped after the dropped round
