"""Real nodes against a live test server: enrollment, a fast-retry session, a fleet in threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from qflare.crypto import SignatureScheme, SystemRng
from qflare.node import HttpApi, NodeRunner, NodeSession, NodeState, RetryPolicy, RunReport, enroll

from .conftest import LiveServer

RunnerFor = Callable[[int, NodeSession], NodeRunner]


def enroll_node(live: LiveServer, root: Path) -> NodeState:
    """Enroll a node (ed25519) in ``root`` with a fresh token and open its state."""
    with HttpApi(live.url, insecure=True) as api:
        enroll(root, api, live.new_token(), scheme=SignatureScheme.ED25519, rng=SystemRng())
    return NodeState.open(root)


def fast_session(live: LiveServer, state: NodeState, stop: threading.Event) -> NodeSession:
    """A session whose retries are quick (50 ms doubling to 0.5 s) and that ``stop`` ends."""
    return NodeSession(
        HttpApi(live.url, insecure=True),
        state.require_device(),
        state.signer(),
        rng=SystemRng(),
        clock=time.time,
        sleep=stop.wait,
        policy=RetryPolicy(initial_s=0.05, max_delay_s=0.5),
        stop_event=stop,
    )


def run_fleet(
    live: LiveServer,
    states: list[NodeState],
    runner_for: RunnerFor,
    *,
    max_rounds: int | None = None,
    done: Callable[[], bool] | None = None,
    timeout: float = 60.0,
    stop: threading.Event | None = None,
) -> list[RunReport | None]:
    """Run one node per state in a thread; the report of each (``None``: it did not finish).

    Without ``done`` the nodes run ``max_rounds`` each and are waited for up to ``timeout``;
    with ``done`` the fleet runs until it returns true (or ``timeout``), then is stopped. Any
    exception a node raises fails the caller.
    """
    reports: list[RunReport | None] = [None] * len(states)
    errors: list[BaseException] = []
    stop = stop or threading.Event()

    def work(i: int) -> None:
        session = fast_session(live, states[i], stop)
        try:
            reports[i] = runner_for(i, session).run(max_rounds=max_rounds, stop_event=stop)
        except BaseException as exc:
            errors.append(exc)
        finally:
            session.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(states))]
    for t in threads:
        t.start()
    if done is None:
        for t in threads:
            t.join(timeout=timeout)
    else:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done():
            time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(timeout=20)
    assert not errors, errors
    return reports
