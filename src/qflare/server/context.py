"""Everything a request handler needs, built once by the app factory (no module globals)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from qflare.crypto import MlDsa65Signer, Rng
from qflare.ledger import Ledger
from qflare.protocol.identity import AuthorityKey
from qflare.server.authority_client import AuthorityClient
from qflare.server.drivers import RoundDriver
from qflare.server.limits import BodyLimits, Inflight, RateLimiter
from qflare.server.model import ModelStore
from qflare.server.sessions import SessionTable
from qflare.server.settings import ServerSettings
from qflare.server.witnesses import Cosigner


@dataclass
class ServerContext:
    """Shared server state (one per app).

    ``authority`` and ``authority_key`` are both set, or enrollment is disabled. ``limiter``
    meters anonymous traffic per client IP, ``device_limiter`` authenticated traffic per device;
    ``unauthenticated`` counts unauthenticated connections in progress (shared with the HTTP
    protocol, which counts connections still owing a request head).
    """

    settings: ServerSettings
    engine: Engine
    factory: sessionmaker[Session]
    identity: MlDsa65Signer
    sessions: SessionTable
    coordinator: RoundDriver
    ledger: Ledger
    cosigner: Cosigner
    models: ModelStore
    clock: Callable[[], float]
    rng: Rng
    limiter: RateLimiter
    device_limiter: RateLimiter
    bodies: BodyLimits
    unauthenticated: Inflight
    long_polls: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1000))
    authority: AuthorityClient | None = None
    authority_key: AuthorityKey | None = None
