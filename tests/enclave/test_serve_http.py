"""The enclave mode served over loopback HTTP: a server with its aggregation enclave, real nodes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from qflare.crypto import DeterministicRng, SystemRng
from qflare.fl.robust import make_defence
from qflare.node import (
    ConstantTrainer,
    NodeRunner,
    NodeSession,
    NodeState,
    RunReport,
)
from qflare.node.enclave_upload import enclave_participant, pinned_policy
from qflare.participant.base import FloatVector
from qflare.protocol.identity import encode_authority_key
from qflare.server.authority_client import load_authority_key
from qflare.server.enclave_coordinator import RESTART_ABORT
from qflare.store.db import make_engine, session_factory
from qflare.store.models import Device, ModelVersion, Round
from qflare.tee.aggregator_ta import AggregatorConfig, aggregator_measurement
from tests.node.conftest import LiveServer, start_server, stop_server
from tests.node.fleet import enroll_node, run_fleet

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DIM = 64


class NanTrainer(ConstantTrainer):
    """A broken (or malicious) device: its update holds a NaN."""

    def train(self, weights: FloatVector, round_id: int) -> tuple[FloatVector, int]:
        delta, weight = super().train(weights, round_id)
        delta[3] = np.nan
        return delta, weight


def _server(tmp_path: Path, n: int, rounds: int, **overrides: object) -> LiveServer:
    values: dict[str, object] = {
        "protocol": "enclave",
        "enclave_allow_simulated": True,
        "model": f"vector:{DIM}",
        "min_clients": n,
        "max_clients": n,
        "max_rounds": rounds,
        "step_timeout_s": 10.0,
    }
    values.update(overrides)
    return start_server(tmp_path, **values)


def _measurement(live: LiveServer) -> bytes:
    assert live.settings.authority_key is not None
    key = load_authority_key(live.settings.authority_key)
    config = AggregatorConfig(
        authority=encode_authority_key(key), min_accepted=live.settings.enclave_min_accepted
    )
    return aggregator_measurement(config)


def _run(
    live: LiveServer,
    tmp_path: Path,
    trainers: list[ConstantTrainer],
    pins: list[bytes],
    rounds: int,
) -> tuple[list[NodeState], list[RunReport]]:
    root = (live.settings.state_dir / "enclave" / "maker" / "maker.cert").read_bytes()
    states = [enroll_node(live, tmp_path / f"node{i}") for i in range(len(trainers))]

    def runner(i: int, session: NodeSession) -> NodeRunner:
        policy = pinned_policy(pins[i], (root,), allow_simulated=True)
        return NodeRunner(
            states[i],
            session,
            trainers[i],
            DeterministicRng(300 + i),
            poll_wait=0.5,
            pause_s=0.1,
            participants=[enclave_participant(trainers[i], policy, SystemRng())],
        )

    done = lambda: len(_closed(live)) >= rounds  # noqa: E731
    reports = run_fleet(live, states, runner, done=done, timeout=90)
    return states, [r for r in reports if r is not None]


def _closed(live: LiveServer) -> list[Round]:
    factory = session_factory(make_engine(live.settings.database_url))
    with factory() as db:
        rows = db.query(Round).order_by(Round.id).all()
        return [r for r in rows if r.closed_at is not None]


def _models(live: LiveServer) -> list[npt.NDArray[np.float32]]:
    factory = session_factory(make_engine(live.settings.database_url))
    with factory() as db:
        rows = db.query(ModelVersion).order_by(ModelVersion.version).all()
        return [np.frombuffer(r.weights, dtype=np.float32) for r in rows]


def _expected(defence: str, trainers: list[ConstantTrainer], round_id: int) -> np.ndarray:
    updates = np.stack([t.delta(DIM, round_id) for t in trainers])
    weights = np.array([t.weight for t in trainers], dtype=np.float64)
    return make_defence(defence).aggregate(updates, weights, None).mean


def test_four_nodes_complete_two_rounds_and_the_model_moves_by_the_defence(
    tmp_path: Path,
) -> None:
    live = _server(tmp_path, 4, 2)
    try:
        trainers = [ConstantTrainer(seed=80 + i, weight=2 + i) for i in range(4)]
        pin = _measurement(live)
        _states, reports = _run(live, tmp_path, trainers, [pin] * 4, rounds=2)
        rows = _closed(live)
        assert [r.state for r in rows] == ["COMPLETED", "COMPLETED"], [r.abort_reason for r in rows]
        models = _models(live)
        assert len(models) == 3
        for row, before, after in zip(rows, models, models[1:], strict=False):
            expected = _expected(live.settings.enclave_defence, trainers, row.id)
            np.testing.assert_allclose(after - before, expected, rtol=0, atol=1e-6)
            assert json.loads(row.survivors or "[]") == sorted(map(int, json.loads(row.devices)))
            assert row.culprits is None
        assert [r.completed for r in reports] == [2] * 4
    finally:
        stop_server(live)


def test_a_nan_upload_is_excluded_and_a_wrong_pin_declines_while_the_round_completes(
    tmp_path: Path,
) -> None:
    live = _server(tmp_path, 4, 1, enclave_defence="fedavg")
    try:
        trainers = [ConstantTrainer(seed=90 + i, weight=3) for i in range(3)]
        trainers.append(NanTrainer(seed=99, weight=3))
        pin = _measurement(live)
        pins = [pin, pin, b"\x00" * 32, pin]  # node 2 pins another enclave
        states, reports = _run(live, tmp_path, trainers, pins, rounds=1)
        (row,) = _closed(live)
        assert row.state == "COMPLETED", row.abort_reason
        models = _models(live)
        honest = [trainers[0], trainers[1]]
        np.testing.assert_allclose(
            models[1] - models[0], _expected("fedavg", honest, row.id), rtol=0, atol=1e-6
        )
        devices = {v: int(k) for k, v in json.loads(row.devices).items()}
        ids = [s.require_device().device_id for s in states]
        culprits = json.loads(row.culprits or "{}")
        assert list(culprits) == [str(devices[ids[3]])]
        assert culprits[str(devices[ids[3]])] == "upload excluded by the enclave: not-a-number"
        factory = session_factory(make_engine(live.settings.database_url))
        with factory() as db:
            declined = db.get(Device, ids[2])
            assert declined is not None and declined.last_notice is not None
            assert declined.last_notice.startswith("declined: attestation-measurement")
        assert reports[0].completed == reports[1].completed == 1
        assert reports[2].completed == 0 and reports[2].dropped >= 1
        assert reports[3].completed == 0
    finally:
        stop_server(live)


class FailsInRound(ConstantTrainer):
    """A device whose training fails in one round (it then stays silent until the deadline)."""

    def __init__(self, seed: int, weight: int, round_id: int) -> None:
        super().__init__(seed, weight)
        self.round_id = round_id

    def train(self, weights: FloatVector, round_id: int) -> tuple[FloatVector, int]:
        if round_id == self.round_id:
            raise ValueError("training failed")
        return super().train(weights, round_id)


def test_a_round_with_too_few_uploads_aborts_and_the_next_one_completes(tmp_path: Path) -> None:
    live = _server(tmp_path, 3, 1, enclave_defence="fedavg", train_timeout_s=2.0)
    try:
        trainers = [ConstantTrainer(seed=70, weight=4)]
        trainers += [FailsInRound(seed=71 + i, weight=4, round_id=1) for i in range(2)]
        pin = _measurement(live)
        _run(live, tmp_path, trainers, [pin] * 3, rounds=2)
        first, second = _closed(live)[:2]
        assert first.state == "ABORTED"
        assert first.abort_reason is not None and "too-few-accepted" in first.abort_reason
        assert second.state == "COMPLETED", second.abort_reason  # the enclave was restarted
        models = _models(live)
        np.testing.assert_allclose(
            models[1] - models[0], _expected("fedavg", trainers, second.id), rtol=0, atol=1e-6
        )
    finally:
        stop_server(live)


def test_a_restart_aborts_the_open_round_and_the_reopened_enclave_serves_the_next(
    tmp_path: Path,
) -> None:
    live = _server(tmp_path, 3, 1, enclave_defence="fedavg")
    stop_server(live)  # no devices: nothing opened
    factory = session_factory(make_engine(live.settings.database_url))
    with factory() as db, db.begin():
        db.add(
            Round(
                id=1,
                state="UPLOAD",
                config=b"{}",
                devices="{}",
                model_version=0,
                opened_at=1.0,
                deadline_at=2.0,
            )
        )
    port = int(live.url.rsplit(":", 1)[1])
    again = start_server(
        tmp_path,
        port,
        authority=live.authority,
        protocol="enclave",
        enclave_allow_simulated=True,
        enclave_defence="fedavg",
        model=f"vector:{DIM}",
        min_clients=3,
        max_clients=3,
    )
    try:
        trainers = [ConstantTrainer(seed=60 + i, weight=1) for i in range(3)]
        _run(again, tmp_path, trainers, [_measurement(again)] * 3, rounds=2)
        first, second = _closed(again)[:2]
        assert first.state == "ABORTED" and first.abort_reason == RESTART_ABORT
        assert second.state == "COMPLETED", second.abort_reason
    finally:
        stop_server(again)
