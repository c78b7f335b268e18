"""The app factory: ``create_app(settings)``. Nothing is created at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import httpx
from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from qflare import __version__
from qflare.crypto import Rng, SystemRng
from qflare.ledger import Ledger
from qflare.protocol.identity import AuthorityKey
from qflare.server.authority_client import (
    AuthorityClient,
    HttpAuthorityClient,
    load_authority_key,
)
from qflare.server.context import ServerContext
from qflare.server.drivers import make_driver
from qflare.server.errors import install_error_handlers
from qflare.server.guard import AbuseGuard
from qflare.server.identity import load_or_create_identity
from qflare.server.limits import BodyLimits, Inflight, RateLimiter, result_body_limit
from qflare.server.model import ModelStore
from qflare.server.routes import enroll, info, ledger, sessions, tasks
from qflare.server.sessions import SessionTable
from qflare.server.settings import ServerSettings
from qflare.server.witnesses import Cosigner, load_endpoints
from qflare.store.db import (
    DatabaseNotWritable,
    check_writable,
    make_engine,
    migrate,
    session_factory,
)
from qflare.store.repos import SqlLedgerStore

log = logging.getLogger("qflare.server")
TICK_S = 0.1


def _authority(
    settings: ServerSettings, injected: AuthorityClient | None
) -> tuple[AuthorityClient | None, AuthorityKey | None]:
    """The enrollment authority's client and pinned key (``None``: enrollment disabled)."""
    key = load_authority_key(settings.authority_key) if settings.authority_key else None
    if injected is not None or settings.authority_url is None:
        return injected, key
    client = HttpAuthorityClient(
        settings.authority_url, timeout_s=settings.authority_timeout_s, ca=settings.authority_ca
    )
    return client, key


def _body_limits(settings: ServerSettings, models: ModelStore) -> BodyLimits:
    """Body sizes and pace; the result limit follows the federation's model unless set."""
    results = settings.body_limit_results or result_body_limit(
        models.latest()[1].size, settings.max_clients, settings.chronos_rounds_per_epoch
    )
    return BodyLimits(
        enroll=settings.body_limit_enroll,
        session=settings.body_limit_session,
        results=results,
        timeout_s=settings.body_timeout_s,
        min_rate=settings.body_min_rate,
    )


def unauthenticated_counter(settings: ServerSettings) -> Inflight:
    """The count of unauthenticated connections, shared by the guard and the HTTP protocol."""
    return Inflight(settings.max_unauthenticated, settings.max_unauthenticated_per_ip)


def build_context(
    settings: ServerSettings,
    clock: Callable[[], float],
    rng: Rng,
    authority: AuthorityClient | None = None,
    witness_transport: httpx.AsyncBaseTransport | None = None,
    unauthenticated: Inflight | None = None,
) -> ServerContext:
    """Open the database (migrating it), load keys, recover any open round.

    Args:
        settings: Server settings.
        clock: Time source.
        rng: Randomness.
        authority: The enrollment authority to relay to (default: over HTTP at
            ``settings.authority_url``).
        witness_transport: How the server reaches its ledger witnesses (tests; default: network).
        unauthenticated: The count of unauthenticated connections (default: a new one).

    Raises:
        ValueError: ``settings.authority_key`` is not an authority public key.
        DatabaseNotWritable: the database refuses writes (one line says why).
    """
    client, authority_key = _authority(settings, authority)
    engine = make_engine(settings.database_url)
    try:
        migrate(engine)
        check_writable(engine)  # refuse to start rather than fail on the first round's write
    except (DatabaseNotWritable, SQLAlchemyError):
        engine.dispose()
        raise
    factory = session_factory(engine)
    identity = load_or_create_identity(settings.state_dir, rng)
    ledger = Ledger(SqlLedgerStore(factory))
    cosigner = Cosigner(
        ledger,
        identity,
        load_endpoints(settings),
        clock,
        settings.state_dir,
        quorum=settings.witness_quorum,
        timeout_s=settings.witness_timeout_s,
        transport=witness_transport,
    )
    models = ModelStore(factory, settings.dataset, settings.model)
    models.ensure_initial(clock())
    coordinator = make_driver(settings, factory, ledger, models, clock, rng)
    coordinator.recover()
    return ServerContext(
        settings=settings,
        engine=engine,
        factory=factory,
        identity=identity,
        sessions=SessionTable(settings.max_sessions),
        coordinator=coordinator,
        ledger=ledger,
        cosigner=cosigner,
        models=models,
        clock=clock,
        rng=rng,
        limiter=RateLimiter(settings.rate_per_ip),
        device_limiter=RateLimiter(settings.rate_per_device),
        bodies=_body_limits(settings, models),
        unauthenticated=unauthenticated or unauthenticated_counter(settings),
        long_polls=asyncio.Semaphore(settings.max_long_polls),
        authority=client,
        authority_key=authority_key,
    )


async def _ticker(ctx: ServerContext) -> None:
    while True:
        try:
            await run_in_threadpool(ctx.coordinator.tick)
        except Exception:  # the ticker must survive one bad tick; the error is logged
            log.exception("coordinator tick failed")
        await asyncio.sleep(TICK_S)


def create_app(
    settings: ServerSettings,
    *,
    clock: Callable[[], float] = time.time,
    rng: Rng | None = None,
    authority: AuthorityClient | None = None,
    witness_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """Build the QFLARE server application.

    Args:
        settings: Server settings (built by the CLI from the environment / config file).
        clock: Time source (injectable for tests).
        rng: Randomness (the OS CSPRNG by default).
        authority: Enrollment authority client (default: HTTP to ``settings.authority_url``;
            tests inject one in-process).
        witness_transport: How the server reaches its ledger witnesses (tests; default: network).

    The app's ``state.unauthenticated`` counts unauthenticated connections; the HTTP protocol
    of :func:`qflare.server.tls.uvicorn_config` shares it with the abuse guard.
    """
    unauthenticated = unauthenticated_counter(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = build_context(
            settings, clock, rng or SystemRng(), authority, witness_transport, unauthenticated
        )
        app.state.ctx = ctx
        tasks = [asyncio.create_task(_ticker(ctx))]
        if ctx.cosigner.enabled:
            tasks.append(asyncio.create_task(ctx.cosigner.run(settings.witness_interval_s)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            ctx.coordinator.close()
            ctx.engine.dispose()
            if ctx.authority is not authority and isinstance(ctx.authority, HttpAuthorityClient):
                ctx.authority.close()

    app = FastAPI(
        title="QFLARE",
        version=__version__,
        lifespan=lifespan,
        summary="Secure federated learning server",
    )
    for router in (enroll.router, sessions.router, tasks.router, info.router, ledger.router):
        app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(AbuseGuard)
    app.state.unauthenticated = unauthenticated
    return app


def drain(app: FastAPI) -> None:
    """The server is shutting down: stop the coordinator's clock at once.

    Uvicorn lets open requests finish before the lifespan ends; without this the ticker would
    go on meanwhile and could time out a step (abort a round) that the next server process
    should resume.
    """
    ctx = getattr(app.state, "ctx", None)
    if isinstance(ctx, ServerContext):
        ctx.coordinator.drain()


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory``: settings from ``QFLARE_*`` environment variables."""
    return create_app(ServerSettings())
