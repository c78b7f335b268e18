"""Server fixtures: the app over SQLite and over PostgreSQL (a fresh schema per test).

PostgreSQL comes from ``QFLARE_TEST_POSTGRES_URL`` (``.ci/run`` starts a local server and sets
it), else ``postgresql://root@127.0.0.1:5432/test`` or ``postgresql://postgres@…/postgres``.
The PostgreSQL variants are skipped only when no server answers, and then fail instead when
``QFLARE_REQUIRE_POSTGRES=1``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from qflare.crypto import SignatureScheme
from qflare.server.app import create_app
from qflare.server.authority_client import AuthorityClient
from qflare.server.context import ServerContext
from qflare.server.settings import ServerSettings
from tests.authority.helpers import TestAuthority, make_authority
from tests.server.helpers import Device

PG_ENV = "QFLARE_TEST_POSTGRES_URL"
REQUIRE_ENV = "QFLARE_REQUIRE_POSTGRES"
PG_CANDIDATES = (
    "postgresql://root@127.0.0.1:5432/test",
    "postgresql://postgres@127.0.0.1:5432/postgres",
)


def pg_engine(url: str) -> Engine:
    """A pool-less admin engine with a short connect timeout."""
    u = make_url(url).set(drivername="postgresql+psycopg")
    return create_engine(u.update_query_dict({"connect_timeout": "3"}), poolclass=NullPool)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of a reachable PostgreSQL server (or skip / fail, see the module docstring)."""
    candidates = [os.environ[PG_ENV]] if os.environ.get(PG_ENV) else list(PG_CANDIDATES)
    errors = []
    for url in candidates:
        engine = pg_engine(url)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return url
        except OperationalError as exc:
            errors.append(f"{url}: {str(exc.orig).strip().splitlines()[0]}")
        finally:
            engine.dispose()
    reason = f"PostgreSQL unreachable ({'; '.join(errors)}); set {PG_ENV}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/db.sqlite"
        return
    base = request.getfixturevalue("postgres_url")
    schema = f"qflare_test_{secrets.token_hex(6)}"
    admin = pg_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def make_settings(database_url: str, tmp_path: Path, **overrides: Any) -> ServerSettings:
    """Test settings: plain HTTP in-process, small model, Ed25519 devices, quick rounds."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "state_dir": tmp_path / "state",
        "insecure": True,
        "dataset": "digits",
        "signature_scheme": "ed25519",
        "min_clients": 2,
        "round_interval_s": 0.0,
        "step_timeout_s": 30.0,
        "long_poll_max_s": 5.0,
        "k": 2,  # the parameter finder has no (k, t) for n=2
        "t": 2,
    }
    return ServerSettings(**(values | overrides))


@dataclass
class Harness:
    """A running app (lifespan entered), its context, and the in-process authority it relays to."""

    client: TestClient
    ctx: ServerContext
    authority: TestAuthority

    def token(self, *, revoked: bool = False, expired: bool = False, label: str = "") -> str:
        """A new enrollment token from the authority."""
        return self.authority.token(revoked=revoked, expired=expired, label=label)

    def count(self, model: type[Any]) -> int:
        """Rows of a table."""
        with self.ctx.factory() as db:
            return db.scalar(select(func.count()).select_from(model)) or 0

    def device(self, scheme: SignatureScheme = SignatureScheme.ED25519) -> Device:
        return Device(self.client, scheme)

    def enrolled(self, scheme: SignatureScheme = SignatureScheme.ED25519) -> Device:
        """A device enrolled with a fresh token."""
        dev = self.device(scheme)
        resp = dev.enroll(self.token())
        assert resp.status_code == 201, resp.text
        return dev


StartServer = Callable[..., Harness]


@pytest.fixture
def authority(tmp_path: Path) -> Iterator[TestAuthority]:
    """An enrollment authority in its own directory (the server only gets ``authority.pub``)."""
    auth = make_authority(tmp_path / "authority")
    yield auth
    auth.close()


@pytest.fixture
def start_server(
    database_url: str, tmp_path: Path, authority: TestAuthority
) -> Iterator[StartServer]:
    """Start the app with :func:`make_settings` plus overrides; stopped after the test.

    Enrollments are relayed to ``authority`` in-process unless ``authority_client`` is given.
    """
    with contextlib.ExitStack() as stack:

        def start(
            clock: Callable[[], float] = time.time,
            authority_client: AuthorityClient | None = None,
            **overrides: Any,
        ) -> Harness:
            settings = make_settings(
                database_url, tmp_path, **({"authority_key": authority.pub} | overrides)
            )
            client = authority_client or authority.service
            app = create_app(settings, clock=clock, authority=client)
            # LIFO: the engine is disposed after the client has left the lifespan
            stack.callback(lambda: app.state.ctx.factory.kw["bind"].dispose())
            http = stack.enter_context(TestClient(app))
            return Harness(http, app.state.ctx, authority)

        yield start


@pytest.fixture
def server(start_server: StartServer) -> Harness:
    """The app with the default test settings."""
    return start_server()
