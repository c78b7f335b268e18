"""The node's main loop: pull tasks, drive one :class:`SecAggClient` per round, push signed results.

Round life cycle seen from a node:

* step 0 (:class:`~qflare.protocol.wire.SecAggStart`): make a fresh client machine first -- it
  checks the round's parameters against this node's :class:`ClientPolicy` and every peer's
  certificate against the pinned enrollment authority, and a refusal is sent to the server as
  a signed :class:`~qflare.protocol.wire.Notice` (the operator sees it in ``qflare device
  list``); then train from the given weights, quantise the delta (weight = number of examples,
  capped so that the cohort's sum fits the ring), answer with ``start()`` (which claims the
  round id in the persisted registry before anything leaves the node);
* step ``s >= 1``: decode the server message, hand the quantised vector over just before the
  ``ShareRelay`` is fed, answer with ``receive()``;
* the same task served again (our answer was lost): send the same signed answer again. A client
  machine never computes a second, different answer to one step;
* a protocol error (forged, inconsistent or unexpected message): log it and drop the round; the
  server then treats the node as a dropout.

Logs carry structured ``extra`` fields (round, step, reason...) and never keys, seeds, shares,
masks or update vectors.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import numpy as np

from qflare.crypto import MaskPrg, RingVector, Rng, SignatureScheme, Signer, ring_dtype
from qflare.node.chronos import (
    ChronosParticipant,
    EpochAbandonedError,
    KeystoreProvider,
    SoftwareKeystores,
)
from qflare.node.deadline import deadline_watch
from qflare.node.session import NodeFatalError, NodeStopped, TaskTransport
from qflare.node.state import NodeState
from qflare.node.trainer import Trainer
from qflare.node.transport import ConflictError, ServerError, TransportError
from qflare.protocol import messages as m
from qflare.protocol.errors import LocalProtocolError, ProtocolError
from qflare.protocol.identity import CertificateCache, IdentityDirectory
from qflare.protocol.policy import ClientPolicy
from qflare.protocol.quantize import QuantConfig, quantize, weight_cap
from qflare.protocol.secagg import RoundRegistry, SecAggClient, State
from qflare.protocol.wire import (
    UPDATE_CONTEXT,
    ChronosTask,
    Notice,
    SecAggStart,
    SecAggStep,
    SignedResult,
    Task,
    result_transcript,
)

__all__ = ["NodeRunner", "RunReport"]

log = logging.getLogger("qflare.node")


@dataclass
class RunReport:
    """What :meth:`NodeRunner.run` did.

    Attributes:
        completed: Rounds in which this node sent its last protocol message.
        dropped: Rounds this node abandoned (protocol error, failed training, superseded).
        results_sent: Signed results delivered (including re-sends).
    """

    completed: int = 0
    dropped: int = 0
    results_sent: int = 0

    @property
    def rounds(self) -> int:
        """Rounds finished either way."""
        return self.completed + self.dropped


@dataclass
class _Round:
    """This node's part in one round."""

    round_id: int
    client: SecAggClient
    vector: RingVector | None  # the quantised update, until the client takes it at R2
    step: int = 0
    answer: SignedResult | None = None


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
    ) -> None:
        self.device_id = state.require_device().device_id
        self._signer: Signer = state.signer()
        self._authority = state.authority()
        self._certs = CertificateCache()  # each peer's certificate is verified once
        self._policy = policy or ClientPolicy()
        self._registry: RoundRegistry = state.registry()
        self._transport, self._trainer, self._rng = transport, trainer, rng
        self._clock, self._sleep = clock, sleep
        self.poll_wait, self.pause_s = poll_wait, pause_s
        self._ledger_check = ledger_check
        self._round: _Round | None = None
        self._prg: MaskPrg | None = None
        self.report = RunReport()
        self.chronos = ChronosParticipant(
            self.device_id,
            self._signer,
            trainer,
            rng,
            keystores or SoftwareKeystores(self._signer, rng, self._authority, self._policy),
            clock,
            certificate=state.certificate(),
            cache=self._certs,
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
                self.chronos.abandon(None)  # an enclave keystore shuts down
                raise
            except TransportError as exc:
                log.warning("transport error", extra={"error": type(exc).__name__, "why": str(exc)})
                self._sleep(self.pause_s)
        log.info("node stopped", extra={"device": self.device_id, **vars(self.report)})
        self.chronos.abandon(None)
        return self.report

    def run_once(self) -> bool:
        """Poll once and handle what comes; ``True`` if a result was sent."""
        task = self._transport.poll(self.poll_wait)
        if task is None:
            return False
        if task.step == 0 and self._ledger_check is not None:
            self._ledger_check()  # a forked ledger stops the node before it takes part
        result = self.handle(task)
        if result is None:
            self._sleep(self.pause_s)  # the server keeps serving it until the step's deadline
            return False
        self._deliver(result)
        return True

    def _deliver(self, result: SignedResult) -> None:
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
            why = f"server rejected step {result.step}: {exc.code}"
            if self.chronos.owns(result):
                self.chronos.abandon(why)
                self._count_drop(result.round_id, result.step, why)
                return
            self._drop(why)
            return
        else:
            self.report.results_sent += 1
            log.info("answer delivered", extra={"round": result.round_id, "step": result.step})
        if self.chronos.delivered(result):
            self.report.completed += 1
        current = self._round
        if current is not None and current.client.state is State.COMPLETED:
            self._complete()

    # ---- tasks ----------------------------------------------------------------------------------

    def handle(self, task: Task) -> SignedResult | None:
        """Compute the signed answer to ``task``; ``None`` if this node does not answer it."""
        body = task.body
        if isinstance(body, ChronosTask):
            try:
                return self.chronos.handle(task, body)
            except EpochAbandonedError as exc:
                self._count_drop(task.round_id, task.step, f"CHRONOS epoch left: {exc}")
                return None
        current = self._round
        if current is not None and current.round_id == task.round_id:
            if task.step == current.step and current.answer is not None:
                log.info("re-sending answer", extra={"round": task.round_id, "step": task.step})
                return current.answer
            if task.step < current.step:
                log.info("stale task ignored", extra={"round": task.round_id, "step": task.step})
                return None
        if task.step == 0 and isinstance(body, SecAggStart):
            return self._start_round(task.round_id, body)
        if task.step >= 1 and isinstance(body, SecAggStep):
            return self._continue_round(task.round_id, task.step, body.message)
        log.warning("malformed task ignored", extra={"round": task.round_id, "step": task.step})
        return None

    def _start_round(self, round_id: int, start: SecAggStart) -> SignedResult | None:
        if self._round is not None:
            self._drop("superseded by a new round")
        cfg = start.config
        log.info(
            "round started",
            extra={"round": round_id, "clients": len(cfg.participants), "k": cfg.k, "t": cfg.t},
        )
        if cfg.round_id != round_id:
            log.warning("round start names another round", extra={"round": round_id})
            return None
        try:  # every check on the server's values comes before any training or key
            directory = IdentityDirectory(
                self._authority,
                start.certificates,
                scheme=SignatureScheme(cfg.signature_scheme),
                cache=self._certs,
            )
            client = SecAggClient(
                cfg,
                start.client_index,
                self._signer,
                directory,
                self._rng,
                self._registry,
                prg=self._mask_prg(cfg),
                policy=self._policy,
            )
        except ProtocolError as exc:
            return self._decline(round_id, exc)
        try:
            vector = self._local_update(start)
            self._round = _Round(round_id, client, vector)
            return self._answer(self._round, 0, client.start())
        except (ProtocolError, ValueError, RuntimeError) as exc:  # RuntimeError: torch
            self._round = None
            self._count_drop(round_id, 0, f"cannot start: {exc}")
            return None

    def _decline(self, round_id: int, exc: ProtocolError) -> SignedResult:
        """Refuse a round the server opened, and tell the server why (signed)."""
        why = str(exc).split("] ", 1)[-1]
        kind = "refused" if isinstance(exc, LocalProtocolError) else "inconsistent"
        log.warning(
            "round declined",
            extra={"round": round_id, "reason": exc.reason.value, "why": why, "kind": kind},
        )
        self.report.dropped += 1
        notice = Notice(kind="declined", reason=exc.reason.value, detail=why)
        return self._sign_notice(round_id, 0, notice)

    def farewell(self, reason: str, detail: str = "") -> SignedResult:
        """A signed ``leaving`` notice, naming the round this node is in (if any).

        The server stops waiting for this node and does not sample it until it polls again.
        """
        current = self._round
        round_id, step = (current.round_id, current.step) if current is not None else (0, 0)
        log.info("leaving the federation", extra={"reason": reason, "round": round_id})
        notice = Notice(kind="leaving", reason=reason[:64], detail=detail[:500])
        return self._sign_notice(round_id, step, notice)

    def _sign_notice(self, round_id: int, step: int, notice: Notice) -> SignedResult:
        message = msgspec.msgpack.encode(notice)
        transcript = result_transcript(self.device_id, round_id, step, message)
        return SignedResult(
            device_id=self.device_id,
            round_id=round_id,
            step=step,
            message=message,
            signature=self._signer.sign(transcript, context=UPDATE_CONTEXT),
        )

    def _local_update(self, start: SecAggStart) -> RingVector:
        """Train, then quantise ``[weight·delta, weight]`` into the round's ring."""
        weights = np.frombuffer(start.weights, dtype="<f4").astype(np.float32)
        began = self._clock()
        with deadline_watch(start.config.round_id, began, start.deadline, self._clock):
            delta, examples = self._trainer.train(weights, start.config.round_id)
        if delta.shape != weights.shape:
            raise ValueError(f"trainer returned {delta.shape}, model has {weights.shape}")
        cfg = QuantConfig(start.clip, start.config.modulus_bits, start.max_total_weight)
        cap = weight_cap(cfg, len(start.config.participants))
        if examples > cap:
            log.info("weight capped so the sum fits", extra={"examples": examples, "cap": cap})
        vector = quantize(delta, min(examples, cap), cfg, self._rng)
        now = self._clock()
        log.info(
            "local update ready",
            extra={"round": start.config.round_id, "examples": examples, "train_s": now - began},
        )
        if now > start.deadline:
            log.warning(
                "training overran the step deadline", extra={"round": start.config.round_id}
            )
        return vector

    def _mask_prg(self, cfg: m.RoundConfig) -> MaskPrg:
        prg = self._prg
        if prg is None or prg.dim != cfg.dim or prg.dtype != ring_dtype(cfg.modulus_bits):
            prg = self._prg = MaskPrg(cfg.dim, cfg.modulus_bits)
        return prg

    def _continue_round(self, round_id: int, step: int, message: bytes) -> SignedResult | None:
        current = self._round
        if current is None or current.round_id != round_id:
            log.info("task for a round this node is not in", extra={"round": round_id})
            return None
        if step != current.step + 1:
            self._drop(f"step {step} after step {current.step}")
            return None
        try:
            msg = m.decode_server(message)
            if isinstance(msg, m.ShareRelay) and current.vector is not None:
                current.client.set_input(current.vector)
                current.vector = None
            reply = current.client.receive(msg)
        except (ProtocolError, msgspec.MsgspecError) as exc:
            self._drop(f"protocol error: {exc}")
            return None
        return self._answer(current, step, reply)

    def _answer(self, current: _Round, step: int, reply: m.ClientMessage) -> SignedResult:
        message = m.encode(reply)
        transcript = result_transcript(self.device_id, current.round_id, step, message)
        result = SignedResult(
            device_id=self.device_id,
            round_id=current.round_id,
            step=step,
            message=message,
            signature=self._signer.sign(transcript, context=UPDATE_CONTEXT),
        )
        current.step, current.answer = step, result
        log.info(
            "answer ready",
            extra={"round": current.round_id, "step": step, "kind": type(reply).__name__},
        )
        return result

    # ---- endings --------------------------------------------------------------------------------

    def _drop(self, why: str) -> None:
        current = self._round
        if current is None:
            return
        self._round = None
        self._count_drop(current.round_id, current.step, why)

    def _count_drop(self, round_id: int, step: int, why: str) -> None:
        self.report.dropped += 1
        log.warning("round dropped", extra={"round": round_id, "step": step, "why": why})

    def _complete(self) -> None:
        current = self._round
        if current is None:
            return
        self._round = None
        self.report.completed += 1
        log.info("round completed", extra={"round": current.round_id})
