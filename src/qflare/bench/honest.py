"""Honest nodes in threads of this process: the real node stack, deterministic updates.

Each node is what ``qflare node run`` runs (enrollment, :class:`~qflare.node.NodeSession` with
its retries, :class:`~qflare.node.NodeRunner`), over HTTP to a server on loopback, with a
:class:`~qflare.node.ConstantTrainer` so that every aggregate can be checked exactly. Used by
``qflare bench abuse`` and by the fault tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from qflare.crypto import SignatureScheme, SystemRng
from qflare.node import (
    ConstantTrainer,
    HttpApi,
    NodeRunner,
    NodeSession,
    NodeState,
    RetryPolicy,
    RunReport,
    enroll,
)

__all__ = ["HonestNodes", "count_retries", "enroll_nodes", "trainer_for"]


def trainer_for(index: int) -> ConstantTrainer:
    """The deterministic trainer of honest node ``index``."""
    return ConstantTrainer(seed=1000 + index, weight=3 + index)


def enroll_nodes(
    url: str, tokens: list[str], root: Path, scheme: SignatureScheme = SignatureScheme.MLDSA65
) -> list[NodeState]:
    """Enroll one node per token under ``root/node{i}`` (plain HTTP on loopback)."""
    states = []
    for i, token in enumerate(tokens):
        with HttpApi(url, insecure=True) as api:
            enroll(root / f"node{i}", api, token, scheme=scheme, rng=SystemRng())
        states.append(NodeState.open(root / f"node{i}"))
    return states


@dataclass
class HonestNodes:
    """Run enrolled nodes in threads until each has finished ``max_rounds`` rounds.

    Attributes:
        url: The server.
        states: The nodes' state directories (from :func:`enroll_nodes`).
        max_rounds: Rounds each node takes part in (completed or dropped) before it stops.
        poll_wait: Long-poll seconds.
        policy: Backoff of each node's session (quick, for loopback).
    """

    url: str
    states: list[NodeState]
    max_rounds: int
    poll_wait: float = 2.0
    policy: RetryPolicy = field(default_factory=lambda: RetryPolicy(initial_s=0.1, max_delay_s=2.0))
    reports: list[RunReport | None] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    handshakes: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        """Start one thread per node."""
        self.reports = [None] * len(self.states)
        self.handshakes = [0] * len(self.states)
        for i in range(len(self.states)):
            thread = threading.Thread(target=self._work, args=(i,), name=f"node{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def join(self, timeout_s: float) -> bool:
        """Wait for every node to finish (``False`` if some did not in time; they are stopped)."""
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        done = not any(t.is_alive() for t in self._threads)
        self.stop.set()
        for thread in self._threads:
            thread.join(10)
        return done

    def _sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)

    def _work(self, i: int) -> None:
        state = self.states[i]
        session = NodeSession(
            HttpApi(self.url, insecure=True),
            state.require_device(),
            state.signer(),
            rng=SystemRng(),
            clock=time.time,
            sleep=self._sleep,
            policy=self.policy,
            stop_event=self.stop,
        )
        runner = NodeRunner(
            state,
            session,
            trainer_for(i),
            SystemRng(),
            sleep=self._sleep,
            poll_wait=self.poll_wait,
            pause_s=0.1,
        )
        try:
            self.reports[i] = runner.run(max_rounds=self.max_rounds, stop_event=self.stop)
        except Exception as exc:  # every failure is reported, none is hidden
            self.errors.append(f"node{i}: {type(exc).__name__}: {exc}"[:300])
        finally:
            self.handshakes[i] = session.handshakes
            session.close()


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


@contextmanager
def count_retries() -> Iterator[_Count]:
    """Count the node sessions' retry warnings instead of printing them."""
    logger = logging.getLogger("qflare.node.session")
    handler, propagate = _Count(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
