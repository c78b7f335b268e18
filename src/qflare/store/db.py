"""Engines, sessions and migrations. SQLite file by default, PostgreSQL by URL.

A database that refuses writes (read-only files, a full disk, a lost PostgreSQL connection) is
an *operational* condition, not a bug: :class:`DatabaseUnavailable` names it for the layers
above (the server answers 503), :func:`check_writable` finds it at start-up and
:func:`describe_database_error` turns it into one line for an operator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
# SQLite errors after which a pooled connection must not be reused: a connection opened while
# its file was read-only stays read-only, one that hit an I/O error may hold a stale lock.
_SQLITE_STALE = ("readonly database", "disk i/o error", "unable to open database")


class DatabaseUnavailable(Exception):  # noqa: N818 - a condition, named like DatabaseError
    """The database refused a read or write; retrying later may succeed.

    Args:
        reason: One line saying why (never a URL with a password, never row data).
        retry_after_s: When a retry makes sense, in seconds.
    """

    def __init__(self, reason: str, retry_after_s: int = 1) -> None:
        super().__init__(reason)
        self.reason, self.retry_after_s = reason, max(1, retry_after_s)


class DatabaseNotWritable(Exception):  # noqa: N818 - a condition
    """At start-up: the database cannot be written (the server refuses to start)."""


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "handle_error")
        def _discard_stale(ctx: ExceptionContext) -> None:
            if any(s in str(ctx.original_exception).lower() for s in _SQLITE_STALE):
                ctx.is_disconnect = True  # the pool opens a fresh connection next time

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to ``engine`` (objects stay usable after commit)."""
    return sessionmaker(engine, expire_on_commit=False)


def migrate(engine: Engine) -> None:
    """Bring the schema to the latest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def safe_url(url: str) -> str:
    """``url`` with any password masked (fit for logs and messages)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return "<unparsable database URL>"


def describe_database_error(exc: BaseException) -> str:
    """One line for an operator: what the database said, and what usually causes it."""
    orig = getattr(exc, "orig", None) or exc
    text_ = " ".join(str(orig).split())[:200] or type(orig).__name__
    low = text_.lower()
    if "readonly" in low or "read-only" in low or "disk i/o error" in low:
        hint = "the database file, its -wal/-shm files or their directory are not writable"
    elif "full" in low or "no space" in low:
        hint = "the disk holding the database is full"
    elif "unable to open" in low:
        hint = "the database file or its directory cannot be opened"
    else:
        hint = "the database server refused the operation or cannot be reached"
    return f"{text_} ({hint})"


def check_writable(engine: Engine) -> None:
    """Commit one harmless write (the schema version row rewritten as it is).

    Raises:
        DatabaseNotWritable: the commit failed; the message says why in one line.
    """
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
    except SQLAlchemyError as exc:
        raise DatabaseNotWritable(
            f"the database {safe_url(str(engine.url))} is not writable: "
            f"{describe_database_error(exc)}"
        ) from exc


def database_problem(url: str) -> str | None:
    """Why the database at ``url`` cannot serve a server, in one line without a password.

    ``None``: it opens, migrates and takes a write.
    """
    engine = make_engine(url)
    try:
        migrate(engine)
        check_writable(engine)
    except DatabaseNotWritable as exc:
        return str(exc)
    except SQLAlchemyError as exc:
        return f"the database {safe_url(url)} cannot be opened: {describe_database_error(exc)}"
    finally:
        engine.dispose()
    return None
