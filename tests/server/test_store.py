"""Repository guarantees the server relies on, over SQLite and PostgreSQL, with real threads."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from qflare.ledger import Ledger
from qflare.store import repos
from qflare.store.db import MIGRATIONS, make_engine, migrate, session_factory
from qflare.store.repos import SqlLedgerStore


@pytest.fixture
def factory(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


def test_device_indices_and_revocation_rules(factory):
    with factory() as db, db.begin():
        repos.add_device(
            db,
            device_id="d" * 32,
            identity_pk=b"i",
            kem_pk=b"k",
            scheme="x",
            now=0,
            client_index=4,
            certificate=b"cert",
        )
        repos.add_device(db, device_id="e" * 32, identity_pk=b"i", kem_pk=b"k", scheme="x", now=0)
    with pytest.raises(IntegrityError), factory() as db, db.begin():  # an index is never shared
        repos.add_device(
            db, device_id="f" * 32, identity_pk=b"i", kem_pk=b"k", scheme="x", now=0, client_index=4
        )
    with factory() as db, db.begin():
        assert [d.client_index for d in repos.all_devices(db)] == [4, 5]
        assert repos.get_device(db, "d" * 32).certificate == b"cert"
        assert repos.revoke_device(db, "e" * 32, time.time())
        assert not repos.revoke_device(db, "e" * 32, time.time())
    with factory() as db:
        assert [d.id for d in repos.active_devices(db)] == ["d" * 32]


def test_migration_0002_retires_uncertified_devices_and_drops_the_token_table(database_url):
    engine = make_engine(database_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with engine.begin() as conn:
        for i in range(2):
            conn.execute(
                text(
                    "INSERT INTO devices (id, client_index, identity_pk, kem_pk, scheme, enrolled_at)"
                    " VALUES (:id, :i, :pk, :pk, 'mldsa65', 0)"
                ),
                {"id": f"old{i}", "i": i, "pk": b"k"},
            )
    migrate(engine)
    factory = session_factory(engine)
    with factory() as db:
        old = repos.all_devices(db)
        assert [(d.id, d.client_index, d.certificate) for d in old] == [
            ("old1", -2, None),
            ("old0", -1, None),
        ]
        assert all(d.revoked_at is not None for d in old) and repos.active_devices(db) == []
    assert "enrollment_tokens" not in inspect(engine).get_table_names()
    with factory() as db, db.begin():  # the authority's numbering starts at 0 again
        repos.add_device(
            db,
            device_id="n" * 32,
            identity_pk=b"i",
            kem_pk=b"k",
            scheme="x",
            now=0,
            client_index=0,
            certificate=b"c",
        )
    engine.dispose()


def test_operator_ledger_entry_does_not_break_the_servers_ledger(factory):
    server_ledger = Ledger(SqlLedgerStore(factory))
    server_ledger.append("enroll", "server", {"device": "a"}, time.time())
    Ledger(SqlLedgerStore(factory)).append("device_revoke", "operator", {"device": "a"}, 1.0)
    server_ledger.append("enroll", "server", {"device": "b"}, time.time())
    assert [e.kind for e in Ledger(SqlLedgerStore(factory)).entries()] == [
        "enroll",
        "device_revoke",
        "enroll",
    ]
