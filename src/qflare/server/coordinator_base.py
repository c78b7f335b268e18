"""What every round driver shares: settings, stores, the lock, who polled, and task lookup.

Also the database discipline both drivers follow: every write goes through :meth:`_commit`
(one transaction; a failure calls :meth:`_lost` so the driver drops whatever it changed in
memory, and raises :class:`~qflare.store.db.DatabaseUnavailable` for a 503), audit entries go
through an ordered queue that survives a failed write, and a node's signed ``leaving`` notice is
accepted whatever round it names.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from qflare.crypto import CryptoError, RingVector, Rng, SignatureScheme, verify_signature
from qflare.ledger import Ledger
from qflare.ledger.entry import PayloadValue
from qflare.protocol.errors import AbortReason, RemoteProtocolError
from qflare.protocol.graph import complete_threshold, find_params
from qflare.protocol.names import ProtocolName
from qflare.protocol.quantize import QuantConfig, RingOverflowError, dequantize
from qflare.protocol.wire import UPDATE_CONTEXT, Notice, SignedResult, Task, result_transcript
from qflare.server.evaluation import TestAccuracy
from qflare.server.model import ModelStore
from qflare.server.settings import ServerSettings
from qflare.server.store_health import StoreHealth
from qflare.store import conduct, repos
from qflare.store.db import DatabaseUnavailable
from qflare.store.models import Device

log = logging.getLogger("qflare.server")
T = TypeVar("T")
# A device counts as live if it polled within one long-poll plus this grace: a node re-polls
# as soon as a poll ends, so a node that stopped polling for longer is gone (or stuck).
LIVE_GRACE_S = 10.0
Payload = dict[str, PayloadValue]


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

    def task_for(self, device_id: str) -> Task | None:
        """The device's pending task, if any."""
        with self._lock:
            live = self._live
            if live is None or device_id not in live.index_of:
                return None
            return live.task_for(live.index_of[device_id])
