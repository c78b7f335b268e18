"""A bad-token burst from the honest nodes' own address does not starve them.

The issue: with the per-IP limit lowered to 100/s, a bad-token burst throttled the honest nodes
sharing the IP (a round aborted, two ran short), and the answer was ``unexpected_message``
without ``Retry-After``. Now anonymous traffic is metered per IP and authenticated traffic per
device: the burst is answered 429 ``rate_limited`` with ``Retry-After`` and every round
completes with the exact sum.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx

from qflare.bench.flood import FloodConfig, flood_summary
from tests.faults.live import Live

ROUNDS = 3


def test_honest_rounds_complete_beside_a_bad_token_burst_from_their_address(
    live_factory, tmp_path: Path
):
    live: Live = live_factory(rate_per_ip=100.0, max_rounds=ROUNDS)
    nodes = live.nodes(tmp_path / "nodes", 3, rounds=ROUNDS)
    stop, seen = threading.Event(), []
    burst = FloodConfig(live.port, rate=400.0, seconds=60.0, connections=8)
    attacker = threading.Thread(target=lambda: seen.append(flood_summary(burst, stop.is_set)))
    attacker.start()
    try:
        nodes.start()  # the nodes open their sessions during the burst
        finished = nodes.join(60)
    finally:
        stop.set()
        attacker.join(30)
    assert finished and not nodes.errors, nodes.errors
    [report] = seen
    assert report["statuses"].get("429", 0) > report["sent"] // 4, report
    assert [r.completed for r in nodes.reports if r] == [ROUNDS] * 3
    assert live.check_rounds(nodes.states) == list(range(1, ROUNDS + 1))


def test_the_refusal_names_itself_and_says_when_to_come_back(live_factory):
    live: Live = live_factory(rate_per_ip=5.0)
    with httpx.Client(base_url=live.url, timeout=10) as http:
        answers = [http.get("/v1/health") for _ in range(8)]
    refused: list[Any] = [r for r in answers if r.status_code == 429]
    assert refused, [r.status_code for r in answers]
    for resp in refused:
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["code"] == "rate_limited"
        assert int(resp.headers["retry-after"]) >= 1
        assert resp.headers["connection"] == "close"  # nothing pipelined behind it is kept
