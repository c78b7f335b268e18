"""What every round driver shares: settings, stores, the lock, who polled, and task lookup."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from qflare.crypto import Rng, SignatureScheme
from qflare.ledger import Ledger
from qflare.protocol.quantize import QuantConfig
from qflare.protocol.wire import Task
from qflare.server.model import ModelStore
from qflare.server.settings import ServerSettings


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

    def task_for(self, device_id: str) -> Task | None:
        """The device's pending task, if any."""
        with self._lock:
            live = self._live
            if live is None or device_id not in live.index_of:
                return None
            return live.task_for(live.index_of[device_id])
