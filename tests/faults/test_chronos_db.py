"""CHRONOS and a failing database write: the epoch cannot be rebuilt from a log (the nodes'
keystores do not rewind), so it is abandoned, its rows are closed as aborted with a reason as
soon as the database takes writes, and the next epoch completes with exact sums."""

from __future__ import annotations

from pathlib import Path

import pytest

from qflare.node import ConstantTrainer
from qflare.protocol.quantize import QuantConfig
from qflare.server import app as app_module
from qflare.server.chronos_coordinator import WRITE_ABORT, ChronosCoordinator
from qflare.store.db import make_engine
from tests.node.conftest import stop_server
from tests.node.fleet import enroll_node
from tests.node.test_chronos_http import DIM, _rounds, _run_epoch, _server

from .harness import WriteFaults
from .helpers import assert_rounds_exact

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_a_failed_write_abandons_the_epoch_and_the_next_one_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = WriteFaults(mode="always", only="INSERT INTO round_events", when=lambda: False)

    def engine(url: str):  # the server's engine, with the fault switch attached
        made = make_engine(url)
        faults.attach(made)
        return made

    monkeypatch.setattr(app_module, "make_engine", engine)
    live = _server(tmp_path, "chronos")  # two rounds per epoch, two rounds in all
    coord = live.server.config.app.state.ctx.coordinator
    assert isinstance(coord, ChronosCoordinator)
    # the first write once round 1 runs (a masked input's log row) fails, and only that one
    faults.when = lambda: faults.failed == 0 and coord.live is not None and coord.live.in_round
    try:
        states = [enroll_node(live, tmp_path / f"node{i}") for i in range(4)]
        trainers = [ConstantTrainer(seed=50 + i, weight=2 + i) for i in range(4)]
        _run_epoch(live, states, trainers, rounds=3)
        rows = _rounds(live)
    finally:
        stop_server(live)
    assert faults.failed == 1
    assert rows[0].state == "ABORTED" and rows[0].abort_reason == WRITE_ABORT
    assert [r.state for r in rows[1:]] == ["COMPLETED", "COMPLETED"]
    trainer_of = {s.require_device().device_id: t for s, t in zip(states, trainers, strict=True)}
    quant = QuantConfig(1.0, 32, live.settings.max_total_weight)
    done = assert_rounds_exact(live.settings.database_url, trainer_of.__getitem__, quant, DIM)
    assert done == [r.id for r in rows[1:]]
