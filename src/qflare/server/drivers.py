"""Which round driver runs which protocol: a registry, not string tests on protocol names.

Every driver has the surface of :class:`RoundDriver` (what the routes and the ticker call). A
new protocol plugs in by adding its driver class to :data:`DRIVERS`; nothing else in the server
names a protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from qflare.crypto import Rng
from qflare.ledger import Ledger
from qflare.protocol.names import ProtocolName
from qflare.protocol.wire import SignedResult, Task
from qflare.server.chronos_coordinator import ChronosCoordinator
from qflare.server.coordinator import Coordinator
from qflare.server.enclave_coordinator import EnclaveCoordinator
from qflare.server.model import ModelStore
from qflare.server.settings import ServerSettings

__all__ = ["DRIVERS", "DriverFactory", "RoundDriver", "make_driver"]


class RoundDriver(Protocol):
    """What the HTTP layer and the ticker need from a protocol's round driver."""

    generation: int

    def seen(self, device_id: str, now: float) -> None:
        """Record that a device polled."""
        ...

    def task_for(self, device_id: str) -> Task | None:
        """The device's pending task, if any."""
        ...

    def submit(self, device_id: str, result: SignedResult, identity_pk: bytes) -> None:
        """Verify a signed result and feed it to the round."""
        ...

    def tick(self) -> None:
        """Advance on deadlines, close and open rounds."""
        ...

    def recover(self) -> None:
        """Resume or abort what a previous server process left open."""
        ...

    def drain(self) -> None:
        """Stop the clock while the server shuts down."""
        ...

    def close(self) -> None:
        """Release what the driver runs beside the server (e.g. an enclave process)."""
        ...


DriverFactory = Callable[
    [ServerSettings, sessionmaker[Session], Ledger, ModelStore, Callable[[], float], Rng],
    RoundDriver,
]
DRIVERS: Mapping[ProtocolName, DriverFactory] = {
    ProtocolName.SECAGG: Coordinator,
    ProtocolName.SECAGG_PLUS: Coordinator,
    ProtocolName.CHRONOS: ChronosCoordinator,
    ProtocolName.CHRONOS_DM: ChronosCoordinator,
    ProtocolName.ENCLAVE: EnclaveCoordinator,
}
"""The round driver of each protocol."""


def make_driver(
    settings: ServerSettings,
    factory: sessionmaker[Session],
    ledger: Ledger,
    models: ModelStore,
    clock: Callable[[], float],
    rng: Rng,
) -> RoundDriver:
    """The round driver of ``settings.protocol``, built (not yet recovered)."""
    return DRIVERS[settings.protocol](settings, factory, ledger, models, clock, rng)
