"""Failing database writes against the coordinator in-process: memory never runs ahead of the log.

Writes are made to fail like a read-only SQLite file (``attempt to write a readonly database``):
every write transaction once (so every kind of write, at every step, fails once), or all writes
for a long stretch (the 36 s outage of issue 15). Each test ends with every stored round checked
against its exact sum.
"""

from __future__ import annotations

import logging

import msgspec
import pytest

from qflare.protocol import messages as m
from qflare.protocol.secagg import State
from qflare.store import repos
from qflare.store.db import DatabaseUnavailable
from qflare.store.models import Round

from .harness import Federation


def _mirror(fed: Federation) -> tuple[int, str, frozenset[int]] | None:
    """(step, state, pending) of a coordinator recovered from the database right now."""
    shadow = fed.start(faults=False)
    live = shadow.live
    shadow._factory.kw["bind"].dispose()
    return None if live is None else (live.step, live.machine.state.value, live.machine.pending())


def _view(fed: Federation) -> tuple[int, str, frozenset[int]] | None:
    live = fed.coord.live
    return None if live is None else (live.step, live.machine.state.value, live.machine.pending())


def test_every_write_failing_once_costs_a_retry_and_nothing_else(tmp_path, database_url):
    clean = Federation(tmp_path / "clean")
    clean.run()
    fed = Federation(tmp_path / "faulty", url=database_url)
    fed.faults.mode = "once"
    for _ in range(400):
        fed.see()
        fed.coord.tick()
        fed.step()
        # after every failure memory equals what a restarted server rebuilds from the log
        assert _view(fed) == _mirror(fed)
        if fed.closed():
            break
        fed.clock.now += 1.1  # past the retry pause of the outage
    assert fed.faults.failed > 20 and fed.unavailable > 0
    assert all(r >= 1 for r in fed.retry_after)
    (row,) = fed.rows()
    (clean_row,) = clean.rows()
    assert row.state == State.COMPLETED.value and row.result == clean_row.result
    assert row.survivors == clean_row.survivors  # nobody was dropped for the server's failure
    assert fed.check() == [row.id]
    fed.clock.now += 1.1
    fed.coord.tick()  # an audit entry whose write failed is appended by the next tick
    fed.coord._ledger.verify()
    kinds = [e.kind for e in fed.coord._ledger.entries()]
    assert kinds == [e.kind for e in clean.coord._ledger.entries()]  # audit order kept


def test_a_long_outage_holds_the_round_and_opens_nothing(tmp_path, caplog, database_url):
    fed = Federation(tmp_path, url=database_url, settings={"max_rounds": 2})
    fed.coord.tick()  # round 1 opens
    for _ in range(3):
        fed.step()
        fed.coord.tick()
    assert fed.coord.live is not None and fed.coord.live.step >= 1
    before = _view(fed)
    fed.faults.mode = "always"
    with caplog.at_level(logging.INFO, logger="qflare.server"):
        for _ in range(60):  # 36 s of refused writes, ticks every 0.6 s, every node retrying
            fed.clock.now += 0.6
            fed.see()
            fed.coord.tick()
            fed.step()
    assert _view(fed) == before == _mirror(fed)  # nothing moved: not in memory, not in the DB
    assert fed.unavailable > 30 and len(fed.rows()) == 1
    errors = [r for r in caplog.records if r.getMessage() == "database unavailable"]
    assert len(errors) == 1  # one line per outage, no traceback per tick
    assert not [r for r in caplog.records if r.exc_info]
    fed.faults.mode = "off"
    fed.run(until=2)
    assert [r.state for r in fed.rows()] == ["COMPLETED", "COMPLETED"]
    assert all(len(r.survivors.split(",")) == fed.n for r in fed.rows())
    assert fed.check() == [1, 2]
    assert any(r.getMessage() == "database writable again" for r in caplog.records)


def test_a_failed_close_leaves_no_half_closed_round(tmp_path):
    """The step that finishes a round is written with its result and model, or not at all."""
    fed = Federation(tmp_path)
    fed.faults.mode, fed.faults.only = "always", "INSERT INTO models"  # the close's last write
    fed.coord.tick()
    for _ in range(20):
        fed.step()
        fed.coord.tick()
        fed.clock.now += 1.1  # past each retry pause: the close is tried again and again
    assert fed.faults.failed > 1
    with fed.coord._factory() as db:
        (row,) = repos.rounds(db)
        assert row.closed_at is None and row.result is None and row.state == "R4_UNMASK"
        kinds = [e.kind for e in repos.round_events(db, row.id)]
    assert kinds.count("advance") == 4  # R0..R3: the fifth (to COMPLETED) was rolled back
    assert fed.coord._models.latest()[0] == 0
    assert fed.coord.live is not None and fed.coord.live.machine.ready()
    fed.faults.mode = "off"
    fed.run()
    assert fed.check() == [1] and fed.coord._models.latest()[0] == 1


def test_a_restart_aborts_every_open_round_but_the_newest_current_one(tmp_path):
    fed = Federation(tmp_path, settings={"max_rounds": 0})
    fed.coord.tick()  # round 1 opens; a crash before it closes, then the old bug's leftovers:
    with fed.coord._factory() as db, db.begin():
        first = db.get(Round, 1)
        cfg = msgspec.msgpack.decode(first.config, type=m.RoundConfig)
        for round_id in (2, 3):
            db.add(
                Round(
                    id=round_id,
                    state=State.R0_ADVERTISE_KEYS.value,
                    config=m.encode(msgspec.structs.replace(cfg, round_id=round_id)),
                    devices=first.devices,
                    model_version=0,
                    opened_at=fed.clock(),
                    deadline_at=fed.clock(),
                )
            )
    fed.crash()
    with fed.coord._factory() as db:
        rows = {r.id: r for r in repos.rounds(db)}
    assert rows[1].state == rows[2].state == "ABORTED"
    assert "newer round" in rows[1].abort_reason and rows[3].closed_at is None
    assert fed.coord.live is not None and fed.coord.live.round_id == 3


def test_a_restart_aborts_an_open_round_that_trains_an_old_model(tmp_path):
    fed = Federation(tmp_path, settings={"max_rounds": 0})
    fed.coord.tick()
    with fed.coord._factory() as db, db.begin():
        repos.put_model(db, 1, bytes(64), fed.clock(), None)  # the model moved on meanwhile
    fed.crash()
    (row,) = fed.rows()
    assert row.state == "ABORTED" and "model version 0 is not the latest (1)" in row.abort_reason
    assert fed.coord.live is None
    fed.run(until=2)
    assert fed.check() == [2]


def test_submit_during_an_outage_is_refused_without_touching_the_round(tmp_path):
    fed = Federation(tmp_path)
    fed.coord.tick()
    node = fed.nodes[0]
    task = fed.coord.task_for(node.device_id)
    fed.faults.mode = "always"
    with pytest.raises(DatabaseUnavailable) as first:
        fed.coord.submit(node.device_id, node.answer_to(task), node.signer.public_key)
    with pytest.raises(DatabaseUnavailable) as second:  # within the retry pause: not even tried
        fed.coord.submit(node.device_id, node.answer_to(task), node.signer.public_key)
    assert fed.faults.failed == 1 and first.value.retry_after_s == second.value.retry_after_s == 1
    assert node.index in fed.coord.live.machine.pending()
