"""CHRONOS over real loopback HTTP: a server federation and real nodes run one epoch of 2 rounds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from qflare.crypto import DeterministicRng
from qflare.node import (
    ConstantTrainer,
    NodeRunner,
    NodeSession,
    NodeState,
    NodeStopped,
    RunReport,
    TaskTransport,
)
from qflare.participant.chronos import EnclaveKeystores
from qflare.protocol.quantize import QuantConfig, dequantize
from qflare.protocol.wire import SignedResult, Task
from qflare.server.chronos_coordinator import RESTART_ABORT
from qflare.store.db import make_engine, session_factory
from qflare.store.models import Device, ModelVersion, Round
from qflare.tee import SimulatedRootCa
from tests.faults.helpers import assert_rounds_exact

from .conftest import LiveServer, start_server, stop_server
from .fleet import enroll_node, run_fleet

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

N, DIM = 4, 1000
MAKER = SimulatedRootCa.generate(DeterministicRng(b"simulated TEE maker"))
Wrap = Callable[[int, NodeSession], TaskTransport]


def _server(tmp_path: Path, mode: str, port: int = 0, **overrides: object) -> LiveServer:
    values: dict[str, object] = {
        "protocol": mode,
        "model": f"vector:{DIM}",
        "min_clients": N,
        "max_clients": N,
        "chronos_rounds_per_epoch": 2,
        "max_rounds": 2,
        "step_timeout_s": 6.0,
        "chronos_keystores": "software",
    }
    values.update(overrides)
    return start_server(tmp_path, port, None, **values)


def _closed_rounds(live: LiveServer) -> list[dict[str, object]]:
    return [r for r in live.get("/v1/rounds").json() if r["closed_at"] is not None]


def _run_epoch(
    live: LiveServer,
    states: list[NodeState],
    trainers: list[ConstantTrainer],
    wrap: Wrap = lambda _i, s: s,
    enclave: SimulatedRootCa | bool | Callable[[int], SimulatedRootCa | bool] = False,
    rounds: int = 2,
) -> list[RunReport]:
    """Run the nodes until the server closed ``rounds`` rounds; return their reports."""

    def runner(i: int, session: NodeSession) -> NodeRunner:
        state = states[i]
        mine = enclave(i) if callable(enclave) else enclave
        maker = mine if isinstance(mine, SimulatedRootCa) else None
        keystores = (
            EnclaveKeystores(state.root / "enclave", state.authority(), provisioner=maker)
            if mine
            else None
        )
        return NodeRunner(
            state,
            wrap(i, session),
            trainers[i],
            DeterministicRng(200 + i),
            poll_wait=0.5,
            pause_s=0.1,
            keystores=keystores,
        )

    reports = run_fleet(live, states, runner, done=lambda: len(_closed_rounds(live)) >= rounds)
    return [r for r in reports if r is not None]


def _check_round(
    live: LiveServer, round_id: int, trainers: list[ConstantTrainer]
) -> tuple[np.ndarray, int]:
    """The stored ring sum of ``round_id`` dequantises to sum(weight * delta) of ``trainers``."""
    cfg = QuantConfig(live.settings.clip, 32, live.settings.max_total_weight)
    factory = session_factory(make_engine(live.settings.database_url))
    with factory() as db:
        row = db.get(Round, round_id)
        assert row is not None and row.state == "COMPLETED", row and row.abort_reason
        assert row.result is not None
        total, weight = dequantize(np.frombuffer(row.result, dtype=np.uint32), cfg)
    expected = sum(t.weight * t.delta(DIM, round_id).astype(np.float64) for t in trainers)
    assert weight == sum(t.weight for t in trainers)
    np.testing.assert_allclose(total, expected, rtol=0, atol=weight / cfg.scale + 1e-9)
    return np.asarray(expected), weight


def _rounds(live: LiveServer) -> list[Round]:
    factory = session_factory(make_engine(live.settings.database_url))
    with factory() as db:
        return list(db.scalars(select(Round).order_by(Round.id)).all())


@pytest.mark.parametrize("mode", ["chronos", "chronos-dm"])
def test_four_nodes_run_one_epoch_of_two_rounds_with_exact_sums(tmp_path: Path, mode: str) -> None:
    live = _server(tmp_path, mode)
    try:
        states = [enroll_node(live, tmp_path / f"node{i}") for i in range(N)]
        trainers = [ConstantTrainer(seed=60 + i, weight=3 + i) for i in range(N)]
        reports = _run_epoch(live, states, trainers)
        rows = _rounds(live)
        assert [r.state for r in rows] == ["COMPLETED", "COMPLETED"]
        for row in rows:
            _check_round(live, row.id, trainers)
        by_device = {s.require_device().device_id: t for s, t in zip(states, trainers, strict=True)}
        quant = QuantConfig(live.settings.clip, 32, live.settings.max_total_weight)
        done = assert_rounds_exact(live.settings.database_url, by_device.__getitem__, quant, DIM)
        assert done == [r.id for r in rows]
        assert [r.completed for r in reports] == [2] * N
        assert all(r.dropped == 0 for r in reports)
        factory = session_factory(make_engine(live.settings.database_url))
        with factory() as db:
            versions = [db.get(ModelVersion, v) for v in (0, 1, 2)]
        assert all(v is not None for v in versions)
        w = [np.frombuffer(v.weights, dtype=np.float32) for v in versions if v is not None]
        expected, weight = _check_round(live, rows[1].id, trainers)
        np.testing.assert_allclose(w[2], w[1] + expected / weight, rtol=0, atol=1e-4)
    finally:
        stop_server(live)


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


@pytest.mark.parametrize(("mode", "sends"), [("chronos-dm", 6), ("chronos", 5)])
def test_a_node_dropping_in_round_two_leaves_the_survivors_exact_sum(
    tmp_path: Path, mode: str, sends: int
) -> None:
    live = _server(tmp_path, mode, step_timeout_s=2.0)
    try:
        states = [enroll_node(live, tmp_path / f"node{i}") for i in range(N)]
        trainers = [ConstantTrainer(seed=80 + i, weight=2 + i) for i in range(N)]
        # join, keys, shares, ready, then round 1's masked input (and, in -dm, unmask shares)
        wrap: Wrap = lambda i, s: _QuitAfter(s, sends) if i == N - 1 else s  # noqa: E731
        _run_epoch(live, states, trainers, wrap)
        first, second = _rounds(live)
        _check_round(live, first.id, trainers)
        _check_round(live, second.id, trainers[: N - 1])
    finally:
        stop_server(live)


def _attested_server(tmp_path: Path, *, allow_simulated: bool) -> LiveServer:
    tmp_path.mkdir(parents=True, exist_ok=True)
    root_cert = tmp_path / "tee-root.cert"
    root_cert.write_bytes(MAKER.certificate)
    return _server(
        tmp_path,
        "chronos-dm",
        chronos_rounds_per_epoch=1,
        max_rounds=1,
        chronos_keystores="enclave",
        attestation_roots=[root_cert],
        attestation_allow_simulated=allow_simulated,
    )


def test_attested_enclave_nodes_run_a_chronos_dm_round(tmp_path: Path) -> None:
    live = _attested_server(tmp_path, allow_simulated=True)
    try:
        states = [enroll_node(live, tmp_path / f"node{i}") for i in range(N)]
        trainers = [ConstantTrainer(seed=90 + i, weight=4) for i in range(N)]
        _run_epoch(live, states, trainers, enclave=MAKER, rounds=1)
        (row,) = _rounds(live)
        _check_round(live, row.id, trainers)
        assert all((s.root / "enclave" / "chronos-sealed.bin").exists() for s in states)
    finally:
        stop_server(live)


def test_unattested_or_simulated_keystores_are_not_admitted(tmp_path: Path) -> None:
    """An enclave server refuses software keystores, and simulated evidence unless allowed."""
    live = _attested_server(tmp_path / "strict", allow_simulated=False)
    try:
        states = [enroll_node(live, tmp_path / f"node{i}") for i in range(N)]
        trainers = [ConstantTrainer(seed=95 + i, weight=4) for i in range(N)]
        _run_epoch(live, states, trainers, enclave=lambda i: MAKER if i < 3 else False, rounds=1)
        notices = _notices(live)
        assert "attestation refused" in notices[states[0].require_device().device_id]
        assert "simulated" in notices[states[0].require_device().device_id]
        assert "only attested enclave" in notices[states[3].require_device().device_id]
        assert not [r for r in _rounds(live) if r.state == "COMPLETED"]
    finally:
        stop_server(live)


def _notices(live: LiveServer) -> dict[str, str]:
    factory = session_factory(make_engine(live.settings.database_url))
    with factory() as db:
        return {d.id: d.last_notice or "" for d in db.scalars(select(Device)).all()}


def test_a_restart_aborts_the_interrupted_epoch_with_a_reason(tmp_path: Path) -> None:
    live = _server(tmp_path, "chronos")
    stop_server(live)  # no devices: nothing opened
    factory = session_factory(make_engine(live.settings.database_url))
    with factory() as db, db.begin():
        db.add(
            Round(
                id=1,
                state="ON_MASKED_INPUT",
                config=b"",
                devices="{}",
                model_version=0,
                opened_at=1.0,
                deadline_at=2.0,
            )
        )
    port = int(live.url.rsplit(":", 1)[1])
    again = _server(tmp_path, "chronos", port)
    try:
        (row,) = _rounds(again)
        assert row.state == "ABORTED" and row.abort_reason == RESTART_ABORT
    finally:
        stop_server(again)
