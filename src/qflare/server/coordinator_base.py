"""What every round driver shares: the round lifecycle, settings, stores, the lock, who polled.

:class:`CoordinatorBase` owns what does not depend on the protocol: results come in through
:meth:`~CoordinatorBase.submit` (signature, ``leaving`` and ``declined`` notices, then the
protocol's hook), the clock through :meth:`~CoordinatorBase.tick`, and a round ends through
:meth:`~CoordinatorBase._end_round` (dequantise, refuse a wrapped sum, apply the update to the
global model, close the round row, log and audit it). A protocol's driver plugs in with small
hooks: which step a result answers, how a message is accepted, how to stop waiting for a node,
what the clock does, and what to drop after a failed write.

Also the database discipline both drivers follow: every write goes through :meth:`_commit`
(one transaction; a failure calls :meth:`_lost` so the driver drops whatever it changed in
memory, and raises :class:`~qflare.store.db.DatabaseUnavailable` for a 503), audit entries go
through an ordered queue that survives a failed write, and a node's signed ``leaving`` notice is
accepted whatever round it names.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from qflare.crypto import CryptoError, RingVector, Rng, SignatureScheme, verify_signature
from qflare.fl.strategy import AggregateResult, Strategy, build_strategy
from qflare.ledger import Ledger
from qflare.ledger.entry import PayloadValue
from qflare.protocol.errors import AbortReason, RemoteProtocolError
from qflare.protocol.graph import complete_threshold, find_params
from qflare.protocol.names import ProtocolName
from qflare.protocol.quantize import QuantConfig, RingOverflowError, dequantize
from qflare.protocol.wire import (
    UPDATE_CONTEXT,
    Notice,
    SignedResult,
    Task,
    decode_notice,
    result_transcript,
)
from qflare.server import events
from qflare.server.evaluation import TestAccuracy
from qflare.server.model import ModelStore
from qflare.server.settings import ServerSettings
from qflare.server.store_health import StoreHealth
from qflare.store import conduct, repos
from qflare.store.db import DatabaseUnavailable
from qflare.store.models import Device, Round

log = logging.getLogger("qflare.server")
T = TypeVar("T")
# A device counts as live if it polled within one long-poll plus this grace: a node re-polls
# as soon as a poll ends, so a node that stopped polling for longer is gone (or stuck).
LIVE_GRACE_S = 10.0
Payload = dict[str, PayloadValue]
COMPLETED, ABORTED = "COMPLETED", "ABORTED"  # a closed round row's state, whatever the protocol


@dataclass(frozen=True)
class RoundEnd:
    """How a protocol machine ended one round.

    Attributes:
        round_id: The round.
        total: The exact sum of the survivors' inputs; ``None`` if the round failed.
        survivors: Clients whose inputs are in ``total`` (or would have been).
        culprits: Clients the round found misbehaving (client index -> what they did).
        abort: Why the round failed, if it did.
        audit: Protocol facts for the audit entry (e.g. the CHRONOS epoch).
        aggregate: An aggregate that is already a float update (the enclave's), applied as is
            instead of dequantising ``total``.
    """

    round_id: int
    total: RingVector | None
    survivors: tuple[int, ...]
    culprits: dict[int, str]
    abort: str | None
    audit: Payload = field(default_factory=dict)
    aggregate: AggregateResult | None = None


class LiveState(Protocol):
    """An open round or epoch: maps devices to client indices and serves their tasks."""

    index_of: dict[str, int]

    def task_for(self, index: int) -> Task | None:
        """The task client ``index`` should work on now, if any."""
        ...


L = TypeVar("L", bound=LiveState)


class CoordinatorBase(Generic[L]):
    """Shared state of the SecAgg and CHRONOS coordinators (thread-safe).

    Args:
        settings: Server settings.
        factory: Database session factory.
        ledger: Audit ledger.
        models: Global model store.
        clock: Current time.
        rng: Randomness for graph seeds.
    """

    def __init__(
        self,
        settings: ServerSettings,
        factory: sessionmaker[Session],
        ledger: Ledger,
        models: ModelStore,
        clock: Callable[[], float],
        rng: Rng,
    ) -> None:
        self.settings, self._factory, self._ledger, self._models = settings, factory, ledger, models
        self._clock, self._rng = clock, rng
        self._lock = threading.RLock()
        self._live: L | None = None
        self._seen: dict[str, float] = {}
        self._last_close = 0.0
        self.generation = 0  # bumped whenever tasks change (open, advance, close): cheap to watch
        self._scheme = SignatureScheme(settings.signature_scheme)
        self.quant = QuantConfig(settings.clip, 32, settings.max_total_weight)
        self.health = StoreHealth()
        self.draining = False  # shutting down: the clock stops, so nothing times out meanwhile
        self._evaluator = TestAccuracy(models) if settings.evaluate else None
        self._audits: collections.deque[tuple[str, Payload, float]] = collections.deque()
        # The server optimiser. Adaptive moments (FedAdam, FedYogi, FedAdagrad) live in memory:
        # a restarted server starts them afresh from the stored model.
        self.strategy: Strategy = build_strategy(settings.strategy, settings.strategy_params)

    @property
    def live(self) -> L | None:
        """The round or epoch in progress, if any."""
        return self._live

    def drain(self) -> None:
        """Stop the clock (SIGTERM) while the server finishes its open requests.

        No deadline passes and no round opens meanwhile; results that still arrive are
        accepted and logged, for the next server process to resume from.
        """
        self.draining = True

    def close(self) -> None:
        """Release what the driver runs beside the server (nothing, unless a driver says)."""

    def seen(self, device_id: str, now: float) -> None:
        """Record that a device polled (only recently seen devices are sampled)."""
        with self._lock:
            self._seen[device_id] = now

    def forget(self, device_ids: Iterable[str]) -> None:
        """Stop sampling devices excluded from a round until they poll again.

        A device that missed a deadline may be gone for good (killed, offline); sampling it for
        the next round would cost that round a full step timeout. A live one polls again at once.
        """
        with self._lock:
            for device_id in device_ids:
                self._seen.pop(device_id, None)

    def decode(self, total: RingVector) -> tuple[npt.NDArray[np.float64], int] | str:
        """The dequantised sum and weight, or why it is refused (a total that may have wrapped)."""
        try:
            return dequantize(total, self.quant)
        except RingOverflowError as exc:
            return str(exc)

    def graph_params(self, n: int) -> tuple[int, int]:
        """``(k, t)`` for ``n`` clients: what the clients' default policy accepts.

        ``secagg`` and CHRONOS use the complete graph with ``2t > n + corrupt``; ``secagg+``
        the parameter finder's sparse graph. Explicit ``k``/``t`` settings win (clients whose
        policy they break decline the round, and say why).
        """
        s = self.settings
        if s.k is not None and s.t is not None:
            return min(s.k, n), min(s.t, n)
        if not ProtocolName(s.protocol).sparse_graph:  # (model_copy does not validate)
            return n, min(n, complete_threshold(n, s.corrupt_fraction))
        try:
            p = find_params(n, s.corrupt_fraction, s.dropout_estimate)
        except ValueError:  # too few clients to tolerate the planned dropouts: all must stay
            return n, n
        return p.k, p.t

    def sample(self, db: Session, now: float) -> list[Device]:
        """Live active devices (polled within a long-poll and a grace), minus recent culprits."""
        fresh = now - self.settings.long_poll_max_s - LIVE_GRACE_S
        banned = conduct.recent_culprits(db, self.settings.culprit_quarantine_rounds)
        devices = [
            d
            for d in repos.active_devices(db)
            if self._seen.get(d.id, -1.0) >= fresh and d.id not in banned and d.certificate
        ]
        return devices[: self.settings.max_clients]

    def notice(self, device_id: str, kind: str, reason: str, detail: str) -> None:
        """Record a node's notice for the operator; a leaving node is not sampled again soon.

        Raises:
            DatabaseUnavailable: the notice could not be stored.
        """
        now = self._clock()
        log.warning(
            "device notice",
            extra={"device": device_id, "kind": kind, "reason": reason, "detail": detail},
        )
        if kind == "leaving":
            self._seen.pop(device_id, None)
        self._commit(
            "notice",
            lambda db: conduct.record_notice(db, device_id, f"{kind}: {reason}: {detail}", now),
        )

    def verify_result(
        self, device_id: str, result: SignedResult, identity_pk: bytes, state: str, client: int
    ) -> None:
        """Check a result's signature over (device, round, step, message).

        Raises:
            RemoteProtocolError: 401, it does not verify.
        """
        transcript = result_transcript(device_id, result.round_id, result.step, result.message)
        try:
            verify_signature(
                self._scheme, identity_pk, result.signature, transcript, context=UPDATE_CONTEXT
            )
        except CryptoError as exc:
            raise RemoteProtocolError(
                "result signature does not verify",
                state=state,
                client=client,
                reason=AbortReason.BAD_SIGNATURE,
                http_status=401,
            ) from exc

    def leaving(
        self, device_id: str, result: SignedResult, identity_pk: bytes, notice: Notice
    ) -> int | None:
        """Accept a signed ``leaving`` notice, whatever round it names.

        A node may leave between rounds. Returns the device's index in the live round or
        epoch, if it is in one.

        Raises:
            RemoteProtocolError: 401, the signature does not verify (or the result names
                another device).
            DatabaseUnavailable: the notice could not be stored.
        """
        if result.device_id != device_id:
            raise RemoteProtocolError("result names another device", state="NONE", http_status=403)
        live = self._live
        index = live.index_of.get(device_id) if live is not None else None
        self.verify_result(device_id, result, identity_pk, "NONE", -1 if index is None else index)
        self.notice(device_id, "leaving", notice.reason, notice.detail)
        return index

    def _accuracy(self, version: int | None) -> float | None:
        """Test accuracy of model ``version`` when the server evaluates models."""
        if self._evaluator is None or version is None:
            return None
        return self._evaluator(version)

    # ---- the database ---------------------------------------------------------------------------

    def _lost(self, now: float) -> None:
        """A write failed: drop what memory changed since the last commit (per driver)."""
        raise NotImplementedError

    def _commit(self, what: str, write: Callable[[Session], T]) -> T:
        """Run ``write`` in one transaction.

        Raises:
            DatabaseUnavailable: it failed; :meth:`_lost` has already run.
        """
        now = self._clock()
        try:
            with self._factory() as db, db.begin():
                out = write(db)
        except SQLAlchemyError as exc:
            error = self.health.failed(exc, now, what)
            self._lost(now)
            raise error from exc
        self.health.ok(now)
        return out

    def _guarded(self, what: str, action: Callable[[], T], *, raise_: bool) -> T | None:
        """Run ``action``; a database error there also drops the in-memory changes.

        That covers reads and writes outside :meth:`_commit`. With ``raise_`` the
        :class:`DatabaseUnavailable` reaches the caller (a client gets 503); without, it is
        logged once by :attr:`health`.
        """
        try:
            return action()
        except DatabaseUnavailable:
            if raise_:
                raise
            return None
        except SQLAlchemyError as exc:
            now = self._clock()
            error = self.health.failed(exc, now, what)
            self._lost(now)
            if raise_:
                raise error from exc
            return None

    def _audit(self, kind: str, payload: Payload, now: float) -> None:
        """Append an audit entry, after any still queued; a failed write leaves it queued."""
        self._audits.append((kind, payload, now))
        self._flush_audits()

    def _flush_audits(self) -> None:
        while self._audits:
            kind, payload, now = self._audits[0]
            try:
                self._ledger.append(kind, "server", payload, now)
            except SQLAlchemyError as exc:
                self.health.failed(exc, self._clock(), "audit entry")
                return
            self._audits.popleft()
            self.health.ok(self._clock())

    # ---- the round lifecycle --------------------------------------------------------------------

    def submit(self, device_id: str, result: SignedResult, identity_pk: bytes) -> None:
        """Verify a signed result and feed it to the round in progress.

        Raises:
            RemoteProtocolError: wrong round or step (409), bad signature (401), malformed or
                rejected protocol message (400).
            DatabaseUnavailable: the database refused the write (503; retry later).
        """
        with self._lock:
            now = self._clock()
            if self._unavailable(now):
                raise self.health.unavailable(now)
            self._guarded(
                "result", lambda: self._submit(device_id, result, identity_pk), raise_=True
            )

    def _submit(self, device_id: str, result: SignedResult, identity_pk: bytes) -> None:
        notice = decode_notice(result.message)
        if notice is not None and notice.kind == "leaving":
            index = self.leaving(device_id, result, identity_pk, notice)
            live = self._live
            if live is not None and index is not None:
                self._stop_waiting(live, index, "left: " + notice.reason)
            return
        live, index = self._verified(device_id, result, identity_pk)
        if notice is not None:
            self.notice(device_id, notice.kind, notice.reason, notice.detail)
            self._stop_waiting(live, index, f"{notice.kind}: {notice.reason}")
            return
        self._accept_result(live, index, device_id, identity_pk, result.message)

    def tick(self) -> None:
        """Advance on deadlines, finish rounds, open new ones (database errors are logged)."""
        with self._lock:
            if not self.draining:
                self._guarded("tick", self._tick, raise_=False)

    def _tick(self) -> None:
        now = self._clock()
        if self.health.blocked(now):
            return
        self._flush_audits()
        self._on_tick(now)

    def _completed_rounds(self) -> int:
        with self._factory() as db:
            return repos.count_rounds(db, COMPLETED)

    def _rounds_left(self) -> int | None:
        """Rounds still to complete under ``max_rounds`` (``None``: no limit)."""
        if not self.settings.max_rounds:
            return None
        return self.settings.max_rounds - self._completed_rounds()

    def _cohort(self, now: float) -> tuple[list[Device], int] | None:
        """The devices to sample for a new round and its id; ``None`` if too few are live."""
        with self._factory() as db:
            devices = self.sample(db, now)
            round_id = repos.next_round_id(db)
        if len(devices) < max(self.settings.min_clients, 2):
            return None
        return devices, round_id

    def _end_round(
        self, end: RoundEnd, now: float, *, also: Callable[[Session], None] | None = None
    ) -> int | None:
        """Close round ``end.round_id`` in one transaction (with ``also``), then log and audit it.

        A sum that may have wrapped is refused (the round aborts) rather than applied. Returns
        the new model version, if the round moved the model.

        Raises:
            DatabaseUnavailable: the round could not be closed (:meth:`_lost` has run).
        """
        total, abort = end.total, end.abort
        decoded = self.decode(total) if total is not None else None
        if isinstance(decoded, str):  # refuse a wrapped sum rather than apply it
            abort, total, decoded = decoded, None, None
        result: AggregateResult | None = None
        if decoded is not None:
            result = AggregateResult(decoded[0], float(decoded[1]), len(end.survivors))
        stored = total.tobytes() if total is not None else None
        if end.aggregate is not None and abort is None:  # a float update: nothing to dequantise
            result, stored = end.aggregate, end.aggregate.weighted_sum.astype("<f8").tobytes()
        state = COMPLETED if result is not None else ABORTED
        strategy = copy.deepcopy(self.strategy)  # its moments move only if the close commits

        def write(db: Session) -> int | None:
            if also is not None:
                also(db)
            row = db.get(Round, end.round_id)
            assert row is not None
            row.state, row.closed_at, row.abort_reason = state, now, abort
            conduct.set_culprits(db, end.round_id, end.culprits)
            if result is None:
                return None
            conduct.set_survivors(db, end.round_id, end.survivors)
            row.result = stored
            return self._models.apply(db, strategy, result, end.round_id, now)

        version = self._commit("round close", write)
        self.strategy = strategy
        self._last_close = now
        self.generation += 1
        events.round_closed(
            end.round_id,
            state,
            survivors=end.survivors if result is not None else (),
            model_version=version,
            abort=abort,
            accuracy=self._accuracy(version),
        )
        payload: Payload = {
            "round": end.round_id,
            "state": state,
            "survivors": len(end.survivors),
            "model_version": version,
            "abort": abort,
            **end.audit,
        }
        if end.culprits:
            payload["culprits"] = ",".join(str(c) for c in sorted(end.culprits))
        if result is not None and stored is not None:
            payload["sum_sha256"] = hashlib.sha256(stored).hexdigest()
        self._audit("round_complete" if result is not None else "round_abort", payload, now)
        return version

    # ---- protocol hooks -------------------------------------------------------------------------

    def _unavailable(self, now: float) -> bool:
        """Whether results must wait (503): the database, or the round, is not usable now."""
        return self.health.blocked(now)

    def _verified(self, device_id: str, result: SignedResult, identity_pk: bytes) -> tuple[L, int]:
        """The live round and the sender's index, for a validly signed result of this step.

        Raises:
            RemoteProtocolError: wrong round or step (409), bad signature (401).
        """
        raise NotImplementedError

    def _accept_result(
        self, live: L, index: int, device_id: str, identity_pk: bytes, message: bytes
    ) -> None:
        """Feed a verified protocol message to the round (and advance when it is ready)."""
        raise NotImplementedError

    def _stop_waiting(self, live: L, index: int, why: str) -> None:
        """A node declined the round or left: stop waiting for it (and advance if ready)."""
        raise NotImplementedError

    def _on_tick(self, now: float) -> None:
        """What the clock does when the database works: advance, close, open."""
        raise NotImplementedError

    def task_for(self, device_id: str) -> Task | None:
        """The device's pending task, if any."""
        with self._lock:
            live = self._live
            if live is None or device_id not in live.index_of:
                return None
            return live.task_for(live.index_of[device_id])
