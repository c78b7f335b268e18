"""Nodes that leave: on purpose (a signed notice, in or between rounds) or silently (no polls).
Rounds open only with ``min_clients`` live nodes, and a round does not wait for nodes that said
they left. Each test ends with every stored round checked against its exact sum."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import msgspec
import pytest

from qflare.crypto import SignatureScheme, SystemRng
from qflare.node import HttpApi, NodeState, enroll
from qflare.node.launch import RunOptions, run_node
from qflare.node.trainer import parse_trainer_spec
from qflare.protocol.quantize import QuantConfig
from qflare.protocol.wire import UPDATE_CONTEXT, Notice, SignedResult, result_transcript
from qflare.server.coordinator_base import LIVE_GRACE_S
from qflare.store import repos
from qflare.store.db import make_engine, session_factory
from tests.node.conftest import LiveServer, start_server, stop_server

from .harness import Federation, Node
from .helpers import assert_rounds_exact

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _leaving(node: Node, round_id: int = 0, step: int = 0) -> SignedResult:
    message = msgspec.msgpack.encode(Notice(kind="leaving", reason="stopped", detail="bye"))
    transcript = result_transcript(node.device_id, round_id, step, message)
    return SignedResult(
        device_id=node.device_id,
        round_id=round_id,
        step=step,
        message=message,
        signature=node.signer.sign(transcript, context=UPDATE_CONTEXT),
    )


def _notices(fed: Federation) -> dict[str, str | None]:
    with fed.coord._factory() as db:
        return {d.id: d.last_notice for d in repos.all_devices(db)}


def test_a_node_leaving_between_rounds_is_not_sampled(tmp_path):
    fed = Federation(tmp_path, settings={"max_rounds": 0})
    fed.run(until=1)
    assert fed.coord.live is None
    leaver = fed.nodes[0]
    fed.coord.submit(leaver.device_id, _leaving(leaver, 999, 7), leaver.signer.public_key)
    assert _notices(fed)[leaver.device_id] == "leaving: stopped: bye"
    for _ in range(40):  # the others keep polling; min_clients (4) are no longer live
        fed.clock.now += 0.5
        fed.see(fed.nodes[1:])
        fed.coord.tick()
        fed.step(fed.nodes[1:])
    assert [r.state for r in fed.rows()] == ["COMPLETED"]  # no round opened without it
    assert fed.check() == [1]


def test_a_node_leaving_mid_round_is_dropped_at_once_not_at_the_deadline(tmp_path):
    fed = Federation(tmp_path, n=5, settings={"t": 3})
    fed.coord.tick()
    leaver, others = fed.nodes[4], fed.nodes[:4]
    fed.step(others)
    opened = fed.clock()
    fed.coord.submit(leaver.device_id, _leaving(leaver, 1, 0), leaver.signer.public_key)
    assert fed.coord.live is not None and fed.coord.live.step == 1  # advanced without waiting
    for _ in range(50):
        fed.step(others)
        fed.coord.tick()
        fed.clock.now += 0.01
        if fed.closed():
            break
    (row,) = fed.rows()
    assert row.state == "COMPLETED" and row.survivors == "[0, 1, 2, 3]"
    assert fed.clock() - opened < 1.0
    assert fed.check() == [1]


def test_silent_nodes_do_not_count_as_live(tmp_path):
    fed = Federation(tmp_path, settings={"max_rounds": 0, "long_poll_max_s": 5.0})
    fed.run(until=1)
    silent_for = 5.0 + LIVE_GRACE_S + 1  # one long-poll and the grace, without a poll
    fed.clock.now += silent_for
    fed.see(fed.nodes[:3])  # node 3 was SIGKILLed: it stopped polling
    fed.coord.tick()
    assert fed.coord.live is None and len(fed.rows()) == 1
    fed.see()  # it is back
    fed.coord.tick()
    assert fed.coord.live is not None
    fed.run(until=2)
    assert fed.check() == [1, 2]


def _enroll(live: LiveServer, root: Path) -> NodeState:
    with HttpApi(live.url, insecure=True) as api:
        enroll(root, api, live.new_token(), scheme=SignatureScheme.ED25519, rng=SystemRng())
    return NodeState.open(root)


def test_nodes_that_finish_say_so_and_no_stale_round_opens(tmp_path: Path) -> None:
    """Issue 15: after the nodes exited (--max-rounds), the server opened round after round,
    each aborting after a step timeout. Now each node's exit is a signed notice."""
    settings = {"model": "vector:16", "min_clients": 3, "max_clients": 3, "max_rounds": 0}
    settings |= {"step_timeout_s": 30.0, "max_total_weight": 1000, "round_interval_s": 0.0}
    live = start_server(tmp_path, **settings)
    roots = [tmp_path / f"node{i}" for i in range(3)]
    states = [_enroll(live, root) for root in roots]
    reports: list[object] = []

    def work(i: int) -> None:
        options = RunOptions(
            state_dir=roots[i], insecure=True, trainer_spec=f"constant:{40 + i}", max_rounds=2
        )
        options = RunOptions(**{**vars(options), "poll_wait": 0.5})
        reports.append(run_node(options))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        left = time.monotonic()
        time.sleep(1.5)  # a stale round would open now, and wait 30 s
        rows = live.get("/v1/rounds").json()
    finally:
        stop_server(live)
    assert len(reports) == 3
    assert all(r["closed_at"] is not None for r in rows), rows  # nothing left open
    for r in rows:  # a round opened as the nodes left ends at once, not after 30 s
        assert r["state"] == "COMPLETED" or r["closed_at"] - r["opened_at"] < 5, r
    assert time.monotonic() - left >= 1.5
    url = live.settings.database_url
    with session_factory(make_engine(url))() as db:
        notices = [d.last_notice or "" for d in repos.all_devices(db)]
    assert all(n.startswith("leaving: max_rounds") for n in notices), notices
    trainers = {
        s.require_device().device_id: parse_trainer_spec(f"constant:{40 + i}")
        for i, s in enumerate(states)
    }
    completed = assert_rounds_exact(url, trainers.__getitem__, QuantConfig(1.0, 32, 1000), 16)
    assert len(completed) >= 2
