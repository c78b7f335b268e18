"""What every round driver shares: settings, stores, the lock, who polled, and task lookup."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from sqlalchemy.orm import Session, sessionmaker

from qflare.crypto import RingVector, Rng, SignatureScheme
from qflare.ledger import Ledger
from qflare.protocol.graph import complete_threshold, find_params
from qflare.protocol.quantize import QuantConfig, RingOverflowError, dequantize
from qflare.protocol.wire import Task
from qflare.server.model import ModelStore
from qflare.server.settings import ServerSettings
from qflare.store import conduct, repos
from qflare.store.models import Device

log = logging.getLogger("qflare.server")


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

    @property
    def live(self) -> L | None:
        """The round or epoch in progress, if any."""
        return self._live

    def seen(self, device_id: str, now: float) -> None:
        """Record that a device polled (only recently seen devices are sampled)."""
        with self._lock:
            self._seen[device_id] = now

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
        if s.protocol != "secagg+":
            return n, min(n, complete_threshold(n, s.corrupt_fraction))
        try:
            p = find_params(n, s.corrupt_fraction, s.dropout_estimate)
        except ValueError:  # too few clients to tolerate the planned dropouts: all must stay
            return n, n
        return p.k, p.t

    def sample(self, db: Session, now: float) -> list[Device]:
        """Recently seen active devices, minus those recent rounds named as culprits."""
        fresh = now - 2 * self.settings.long_poll_max_s - self.settings.step_timeout_s
        banned = conduct.recent_culprits(db, self.settings.culprit_quarantine_rounds)
        devices = [
            d
            for d in repos.active_devices(db)
            if self._seen.get(d.id, -1.0) >= fresh and d.id not in banned and d.certificate
        ]
        return devices[: self.settings.max_clients]

    def notice(self, device_id: str, kind: str, reason: str, detail: str) -> None:
        """Record a node's notice for the operator; a leaving node is not sampled again soon."""
        now = self._clock()
        log.warning(
            "device notice",
            extra={"device": device_id, "kind": kind, "reason": reason, "detail": detail},
        )
        with self._factory() as db, db.begin():
            conduct.record_notice(db, device_id, f"{kind}: {reason}: {detail}", now)
        if kind == "leaving":
            self._seen.pop(device_id, None)

    def task_for(self, device_id: str) -> Task | None:
        """The device's pending task, if any."""
        with self._lock:
            live = self._live
            if live is None or device_id not in live.index_of:
                return None
            return live.task_for(live.index_of[device_id])
