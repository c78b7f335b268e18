"""The node's main loop: pull tasks, hand each to its protocol's participant, push the answers.

The loop knows no protocol. Each task's body goes to the participant registered for its type
(:class:`~qflare.participant.secagg.SecAggParticipant` for SecAgg and SecAgg+,
:class:`~qflare.participant.chronos.ChronosParticipant` for CHRONOS); a body no participant
handles is logged and left unanswered. Around that the loop does what every protocol needs:
the ledger check before a round's first step, delivery of the signed answer (a stale refusal is
logged, a rejection makes the participant leave its round), and the run's bookkeeping in a
:class:`~qflare.participant.base.RunReport`.

Logs carry structured ``extra`` fields (round, step, reason...) and never keys, seeds, shares,
masks or update vectors.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from qflare.crypto import Rng
from qflare.node.session import NodeFatalError, NodeStopped, TaskTransport
from qflare.node.state import NodeState
from qflare.node.transport import ConflictError, ServerError, TransportError
from qflare.participant.base import (
    Participant,
    ParticipantFactory,
    ResultSigner,
    RunReport,
    Trainer,
)
from qflare.participant.chronos import ChronosParticipant, KeystoreProvider, SoftwareKeystores
from qflare.participant.secagg import SecAggParticipant
from qflare.protocol.identity import CertificateCache
from qflare.protocol.policy import ClientPolicy
from qflare.protocol.wire import Notice, SignedResult, Task

__all__ = ["NodeRunner", "RunReport"]

log = logging.getLogger("qflare.node")


class NodeRunner:
    """Runs an enrolled node.

    Args:
        state: The node's state directory (identity key, enrollment, round registry).
        transport: Where tasks come from and results go (a :class:`NodeSession` in production).
        trainer: Local training.
        rng: Randomness of the protocol machine and of the stochastic rounding. Use the OS
            CSPRNG in production; a :class:`~qflare.crypto.DeterministicRng` is for tests only
            (it makes masks predictable to anyone who knows the seed).
        clock: Wall-clock time (deadline warnings).
        sleep: Blocking sleep (pauses after errors and ignored tasks).
        poll_wait: Long-poll duration in seconds (bounds how fast a stop request is noticed).
        pause_s: Pause after an error or a task that this node cannot answer.
        keystores: Where CHRONOS epoch secrets live (default: software keystores in process).
        policy: What round parameters this node accepts.
        ledger_check: Called at every round start before anything is computed (e.g.
            :meth:`~qflare.node.ledger_watch.LedgerWatch.check`); raises ``NodeFatalError`` to
            stop the node.
        participants: Further protocols' participants (built from the node's result signer
            and report), asked before the built-in SecAgg and CHRONOS ones: a new protocol
            plugs in here without touching the others.
    """

    def __init__(
        self,
        state: NodeState,
        transport: TaskTransport,
        trainer: Trainer,
        rng: Rng,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        *,
        poll_wait: float = 10.0,
        pause_s: float = 1.0,
        keystores: KeystoreProvider | None = None,
        policy: ClientPolicy | None = None,
        ledger_check: Callable[[], object] | None = None,
        participants: Sequence[ParticipantFactory] = (),
    ) -> None:
        self.device_id = state.require_device().device_id
        signer = state.signer()
        self._results = ResultSigner(self.device_id, signer)
        self._transport, self._clock, self._sleep = transport, clock, sleep
        self.poll_wait, self.pause_s = poll_wait, pause_s
        self._ledger_check = ledger_check
        self.report = RunReport()
        authority, policy = state.authority(), policy or ClientPolicy()
        self._registry = state.registry()  # round ids this node took part in (persisted)
        self.participants: Sequence[Participant] = (
            *(make(self._results, self.report) for make in participants),
            SecAggParticipant(
                self._results,
                trainer,
                rng,
                authority,
                self._registry,
                self.report,
                clock=clock,
                policy=policy,
                cache=CertificateCache(),  # each peer's certificate is verified once
            ),
            ChronosParticipant(
                self._results,
                trainer,
                rng,
                keystores or SoftwareKeystores(signer, rng, authority, policy),
                self.report,
                clock,
                certificate=state.certificate(),
            ),
        )

    # ---- the loop -------------------------------------------------------------------------------

    def run(
        self,
        max_rounds: int | None = None,
        stop_event: threading.Event | None = None,
        *,
        completed_only: bool = False,
    ) -> RunReport:
        """Take part in rounds until ``max_rounds`` are finished or ``stop_event`` is set.

        Args:
            max_rounds: Rounds to take part in (``None``: until stopped).
            stop_event: Set to stop after the current poll.
            completed_only: Count only completed rounds (``qflare node run --max-rounds``): a
                round that was aborted or dropped does not use up the node's share, so the
                server does not run out of nodes for the rounds it still has to complete.

        Raises:
            NodeFatalError: the server refuses this device (revoked or unknown).
        """
        stop = stop_event or threading.Event()
        log.info("node running", extra={"device": self.device_id, "max_rounds": max_rounds})

        def done() -> bool:
            counted = self.report.completed if completed_only else self.report.rounds
            return max_rounds is not None and counted >= max_rounds

        while not stop.is_set() and not done():
            try:
                self.run_once()
            except NodeStopped:
                break
            except NodeFatalError:
                self._abandon_all()  # an enclave keystore shuts down
                raise
            except TransportError as exc:
                log.warning("transport error", extra={"error": type(exc).__name__, "why": str(exc)})
                self._sleep(self.pause_s)
        log.info("node stopped", extra={"device": self.device_id, **vars(self.report)})
        self._abandon_all()
        return self.report

    def run_once(self) -> bool:
        """Poll once and handle what comes; ``True`` if a result was sent."""
        task = self._transport.poll(self.poll_wait)
        if task is None:
            return False
        if task.step == 0 and self._ledger_check is not None:
            self._ledger_check()  # a forked ledger stops the node before it takes part
        participant = self._participant_for(task)
        result = participant.handle(task) if participant is not None else None
        if participant is None or result is None:
            self._sleep(self.pause_s)  # the server keeps serving it until the step's deadline
            return False
        self._deliver(participant, result)
        return True

    def handle(self, task: Task) -> SignedResult | None:
        """Compute the signed answer to ``task``; ``None`` if this node does not answer it."""
        participant = self._participant_for(task)
        return participant.handle(task) if participant is not None else None

    def _participant_for(self, task: Task) -> Participant | None:
        for participant in self.participants:
            if participant.handles(task.body):
                return participant
        log.warning(
            "task declined: no participant for it",
            extra={"round": task.round_id, "step": task.step, "kind": type(task.body).__name__},
        )
        return None

    def _deliver(self, participant: Participant, result: SignedResult) -> None:
        try:
            self._transport.send(result)
        except ConflictError as exc:
            # The step is over: our answer was accepted by an earlier attempt, or came too late.
            log.warning(
                "result refused as stale",
                extra={"round": result.round_id, "step": result.step, "code": exc.code},
            )
        except ServerError as exc:
            log.warning(
                "result rejected",
                extra={"round": result.round_id, "step": result.step, "code": exc.code},
            )
            participant.rejected(result, f"server rejected step {result.step}: {exc.code}")
            return
        else:
            self.report.results_sent += 1
            log.info("answer delivered", extra={"round": result.round_id, "step": result.step})
        participant.delivered(result)

    # ---- endings --------------------------------------------------------------------------------

    def farewell(self, reason: str, detail: str = "") -> SignedResult:
        """A signed ``leaving`` notice, naming the round this node is in (if any).

        The server stops waiting for this node and does not sample it until it polls again.
        """
        positions = (p.position() for p in self.participants)
        round_id, step = next((pos for pos in positions if pos is not None), (0, 0))
        log.info("leaving the federation", extra={"reason": reason, "round": round_id})
        notice = Notice(kind="leaving", reason=reason[:64], detail=detail[:500])
        return self._results.notice(round_id, step, notice)

    def _abandon_all(self) -> None:
        for participant in self.participants:
            participant.abandon(None)
