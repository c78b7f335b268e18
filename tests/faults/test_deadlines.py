"""Deadlines: the training step gets its own (longer) deadline, later steps the step timeout,
tasks announce it; a node warns before its training misses the deadline; and the round event
log says what happened. Rounds end checked against their exact sums."""

from __future__ import annotations

import logging
import time

from qflare.participant.deadline import deadline_watch
from qflare.protocol.wire import SecAggStart
from qflare.server.settings import ServerSettings

from .harness import Federation


def test_the_default_training_deadline_fits_a_slow_first_round():
    settings = ServerSettings()
    assert settings.step_timeout_s == 30 and settings.training_timeout_s == 90
    assert ServerSettings(step_timeout_s=4).training_timeout_s == 12
    assert ServerSettings(train_timeout_s=50).training_timeout_s == 50


def test_training_slower_than_a_step_timeout_does_not_cost_the_round(tmp_path):
    fed = Federation(tmp_path)  # step timeout 10 s: training may take 30 s
    fed.coord.tick()
    opened = fed.clock()
    task = fed.coord.task_for(fed.nodes[0].device_id)
    assert task is not None and isinstance(task.body, SecAggStart) and task.step_timeout_s == 10
    assert task.body.deadline == opened + 30
    fed.clock.now += 25  # the first round loads data, trains on a loaded machine...
    fed.see()
    fed.coord.tick()
    assert fed.coord.live.step == 0  # ...and the server still waits
    fed.step()
    fed.coord.tick()
    assert fed.coord.live.step == 1 and fed.coord.live.deadline == fed.clock() + 10
    fed.run()
    (row,) = fed.rows()
    assert row.state == "COMPLETED" and row.survivors == "[0, 1, 2, 3]"
    assert fed.check() == [1]


def test_a_node_warns_before_its_training_misses_the_deadline(caplog):
    with caplog.at_level(logging.WARNING, logger="qflare.node"):
        now = time.time()
        with deadline_watch(7, now, now + 0.25, time.time):
            time.sleep(0.4)  # slower than the deadline: warned at 80 % of it
        with deadline_watch(8, time.time(), time.time() + 5, time.time):
            pass  # quick: no warning
        time.sleep(0.05)
    warned = [r for r in caplog.records if r.getMessage().startswith("training is about to miss")]
    assert [r.round for r in warned] == [7]  # type: ignore[attr-defined]
    assert 0 < warned[0].left_s < 0.25  # type: ignore[attr-defined]


def test_the_round_event_log(tmp_path, caplog):
    fed = Federation(tmp_path, settings={"max_rounds": 2})
    silent = fed.nodes[3]
    with caplog.at_level(logging.INFO, logger="qflare.server.rounds"):
        fed.coord.tick()
        for _ in range(200):  # round 1: node 3 never answers; round 2: only node 0 does
            fed.see()
            fed.coord.tick()
            answering = fed.nodes[:3] if len(fed.rows()) == 1 else fed.nodes[:1]
            worked = fed.step(answering)
            fed.clock.now += 0.1 if worked else 11
            if len(fed.closed()) == 2:
                break
    lines = [(r.getMessage(), r.__dict__) for r in caplog.records]
    messages = [m for m, _ in lines]
    assert messages.count("round opened") == 2
    excluded = [f for m, f in lines if m == "device excluded"]
    assert (excluded[0]["round"], excluded[0]["device"]) == (1, silent.device_id)
    assert "dropped" in excluded[0]["reason"]
    steps = [f for m, f in lines if m == "step closed" and f["round"] == 1]
    assert [s["state"] for s in steps] == [
        "R0_ADVERTISE_KEYS",
        "R1_SHARE_KEYS",
        "R2_MASKED_INPUT",
        "R3_CONSISTENCY",
    ]
    done = [f for m, f in lines if m == "round completed"]
    assert done[0]["round"] == 1 and done[0]["survivors"] == 3 and done[0]["model_version"] == 1
    aborted = [f for m, f in lines if m == "round aborted"]
    assert aborted[0]["round"] == 2 and "threshold" in aborted[0]["abort"]
    assert fed.check() == [1]


def test_the_event_log_reports_test_accuracy_when_the_server_evaluates(tmp_path, caplog):
    fed = Federation(tmp_path, settings={"model": None, "evaluate": True})
    with caplog.at_level(logging.INFO, logger="qflare.server.rounds"):
        fed.run()
    (done,) = [r for r in caplog.records if r.getMessage() == "round completed"]
    assert 0.0 <= done.accuracy <= 1.0  # type: ignore[attr-defined]
    assert fed.check() == [1]


def test_a_device_excluded_for_silence_is_not_sampled_again_until_it_polls(tmp_path):
    """A node killed mid-round would cost the next round a full timeout if it were sampled."""
    fed = Federation(tmp_path, settings={"max_rounds": 3, "min_clients": 3})
    gone, alive = fed.nodes[3], fed.nodes[:3]
    fed.coord.tick()
    fed.step()  # everyone trains; then node 3 dies (it polled 0 s ago: still "live")
    fed.coord.tick()
    fed.step(alive)
    fed.clock.now += 10.5  # its next step times out and it is excluded
    for _ in range(100):
        fed.see(alive)
        fed.coord.tick()
        fed.step(alive)
        if fed.closed():
            break
        fed.clock.now += 0.3
    fed.coord.tick()
    assert [r.state for r in fed.rows()] == ["COMPLETED", "R0_ADVERTISE_KEYS"]
    assert fed.coord.live is not None  # round 2 opened at once...
    assert gone.device_id not in fed.coord.live.devices.values()  # ...without the dead node
    fed.run(until=2)  # node 3 is back and polls: the next round samples it again
    fed.coord.tick()
    assert fed.coord.live is not None and gone.device_id in fed.coord.live.devices.values()
