"""A device's part in SecAgg / SecAgg+ rounds: one :class:`SecAggClient` per round.

Round life cycle seen from a device:

* step 0 (:class:`~qflare.protocol.wire.SecAggStart`): make a fresh client machine first -- it
  checks the round's parameters against this device's :class:`ClientPolicy` and every peer's
  certificate against the pinned enrollment authority, and a refusal is answered with a signed
  :class:`~qflare.protocol.wire.Notice` (the operator sees it in ``qflare device list``); then
  train from the given weights, quantise the delta (weight = number of examples, capped so that
  the cohort's sum fits the ring), answer with ``start()`` (which claims the round id in the
  registry before anything leaves the device);
* step ``s >= 1`` (:class:`~qflare.protocol.wire.SecAggStep`): decode the server message, hand
  the quantised vector over just before the ``ShareRelay`` is fed, answer with ``receive()``;
* the same task served again (our answer was lost): the same signed answer again. A client
  machine never computes a second, different answer to one step;
* a protocol error (forged, inconsistent or unexpected message): log it and drop the round; the
  server then treats the device as a dropout.

Logs carry structured ``extra`` fields (round, step, reason...) and never keys, seeds, shares,
masks or update vectors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import numpy as np

from qflare.crypto import MaskPrg, RingVector, Rng, SignatureScheme, ring_dtype
from qflare.participant.base import ResultSigner, RunReport, Trainer
from qflare.participant.deadline import deadline_watch
from qflare.protocol import messages as m
from qflare.protocol.errors import LocalProtocolError, ProtocolError
from qflare.protocol.identity import AuthorityKey, CertificateCache, IdentityDirectory
from qflare.protocol.policy import ClientPolicy
from qflare.protocol.quantize import QuantConfig, quantize, weight_cap
from qflare.protocol.secagg import RoundRegistry, SecAggClient, State
from qflare.protocol.wire import Notice, SecAggStart, SecAggStep, SignedResult, Task, TaskBody

__all__ = ["SecAggParticipant"]

log = logging.getLogger("qflare.node")


@dataclass
class _Round:
    """This device's part in one round."""

    round_id: int
    client: SecAggClient
    vector: RingVector | None  # the quantised update, until the client takes it at R2
    step: int = 0
    answer: SignedResult | None = None


class SecAggParticipant:
    """Answers SecAgg and SecAgg+ tasks for one device.

    Args:
        results: Signs every answer with the device identity key.
        trainer: Local training.
        rng: Randomness of the client machine and of the stochastic rounding.
        authority: The enrollment authority key peers' certificates are checked against.
        registry: Round ids this device has taken part in (never reused).
        report: Where rounds completed and dropped are counted.
        clock: Wall-clock time (deadline warnings).
        policy: What round parameters this device accepts.
        cache: Peer certificates verified so far.
    """

    def __init__(
        self,
        results: ResultSigner,
        trainer: Trainer,
        rng: Rng,
        authority: AuthorityKey,
        registry: RoundRegistry,
        report: RunReport,
        *,
        clock: Callable[[], float] = time.time,
        policy: ClientPolicy | None = None,
        cache: CertificateCache | None = None,
    ) -> None:
        self._results, self._trainer, self._rng = results, trainer, rng
        self._authority, self._registry, self._report = authority, registry, report
        self._clock = clock
        self._policy = policy or ClientPolicy()
        self._certs = cache or CertificateCache()
        self._round: _Round | None = None
        self._prg: MaskPrg | None = None

    def handles(self, body: TaskBody) -> bool:
        """SecAgg round starts and steps."""
        return isinstance(body, SecAggStart | SecAggStep)

    def handle(self, task: Task) -> SignedResult | None:
        """The signed answer to ``task``; ``None`` if this device does not answer it."""
        current = self._round
        if current is not None and current.round_id == task.round_id:
            if task.step == current.step and current.answer is not None:
                log.info("re-sending answer", extra={"round": task.round_id, "step": task.step})
                return current.answer
            if task.step < current.step:
                log.info("stale task ignored", extra={"round": task.round_id, "step": task.step})
                return None
        body = task.body
        if task.step == 0 and isinstance(body, SecAggStart):
            return self._start_round(task.round_id, body)
        if task.step >= 1 and isinstance(body, SecAggStep):
            return self._continue_round(task.round_id, task.step, body.message)
        log.warning("malformed task ignored", extra={"round": task.round_id, "step": task.step})
        return None

    # ---- the round's steps ----------------------------------------------------------------------

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
            client = self._client(start)
        except ProtocolError as exc:
            return self._decline(round_id, exc)
        try:
            vector = self._local_update(start)
            self._round = _Round(round_id, client, vector)
            return self._answer(self._round, 0, client.start())
        except (ProtocolError, ValueError, RuntimeError) as exc:  # RuntimeError: torch
            self._round = None
            self._report.drop(round_id, 0, f"cannot start: {exc}")
            return None

    def _client(self, start: SecAggStart) -> SecAggClient:
        """A fresh client machine (it checks the round against the policy and certificates)."""
        cfg = start.config
        directory = IdentityDirectory(
            self._authority,
            start.certificates,
            scheme=SignatureScheme(cfg.signature_scheme),
            cache=self._certs,
        )
        return SecAggClient(
            cfg,
            start.client_index,
            self._results.signer,
            directory,
            self._rng,
            self._registry,
            prg=self._mask_prg(cfg),
            policy=self._policy,
        )

    def _decline(self, round_id: int, exc: ProtocolError) -> SignedResult:
        """Refuse a round the server opened, and tell the server why (signed)."""
        why = str(exc).split("] ", 1)[-1]
        kind = "refused" if isinstance(exc, LocalProtocolError) else "inconsistent"
        log.warning(
            "round declined",
            extra={"round": round_id, "reason": exc.reason.value, "why": why, "kind": kind},
        )
        self._report.dropped += 1
        notice = Notice(kind="declined", reason=exc.reason.value, detail=why)
        return self._results.notice(round_id, 0, notice)

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
        result = self._results.sign(current.round_id, step, m.encode(reply))
        current.step, current.answer = step, result
        log.info(
            "answer ready",
            extra={"round": current.round_id, "step": step, "kind": type(reply).__name__},
        )
        return result

    # ---- endings --------------------------------------------------------------------------------

    def delivered(self, result: SignedResult) -> bool:
        """Count the round as completed once its client machine has sent its last message."""
        current = self._round
        if current is None or current.client.state is not State.COMPLETED:
            return False
        self._round = None
        self._report.complete(current.round_id)
        return True

    def rejected(self, result: SignedResult, why: str) -> None:
        """The server rejected our answer: drop the round."""
        self._drop(why)

    def position(self) -> tuple[int, int] | None:
        """The round and step in progress, if any."""
        current = self._round
        return (current.round_id, current.step) if current is not None else None

    def abandon(self, why: str | None) -> None:
        """Leave the round in progress (uncounted); on shutdown (``None``) keep its state."""
        if why is not None and self._round is not None:
            log.warning("round abandoned", extra={"round": self._round.round_id, "why": why})
            self._round = None

    def _drop(self, why: str) -> None:
        current = self._round
        if current is None:
            return
        self._round = None
        self._report.drop(current.round_id, current.step, why)
