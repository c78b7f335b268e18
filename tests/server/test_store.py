"""Repository guarantees the server relies on, over SQLite and PostgreSQL, with real threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from qflare.ledger import Ledger
from qflare.store import repos
from qflare.store.db import make_engine, migrate, session_factory
from qflare.store.repos import SqlLedgerStore


@pytest.fixture
def factory(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


def _token(factory: sessionmaker[Session], text: str, ttl: float = 3600.0) -> str:
    with factory() as db, db.begin():
        return repos.create_token(
            db, token_id=text[-16:], token=text, label="", now=time.time(), ttl_s=ttl
        ).id


def _race(factory: sessionmaker[Session], token: str, racers: int) -> list[bool]:
    barrier = threading.Barrier(racers)
    wins: list[bool] = []

    def consume(i: int) -> None:
        barrier.wait()
        with factory() as db, db.begin():
            wins.append(repos.consume_token(db, token, f"device{i:026d}", time.time()))

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return wins


def test_concurrent_consumers_of_one_token_have_exactly_one_winner(factory):
    for round_ in range(3):
        token = f"qft_race_{round_:016d}"
        _token(factory, token)
        wins = _race(factory, token, racers=6)
        assert sorted(wins) == [False] * 5 + [True]
        with factory() as db:
            assert repos.token_status(db, token, time.time()) == "used"


def test_failed_enrollment_transaction_leaves_the_token_live(factory):
    _token(factory, "qft_first_token_000000")
    _token(factory, "qft_second_token_00000")
    with factory() as db, db.begin():
        assert repos.consume_token(db, "qft_first_token_000000", "d" * 32, time.time())
        repos.add_device(db, device_id="d" * 32, identity_pk=b"i", kem_pk=b"k", scheme="x", now=0)
    with pytest.raises(IntegrityError), factory() as db, db.begin():  # same device id again
        assert repos.consume_token(db, "qft_second_token_00000", "d" * 32, time.time())
        repos.add_device(db, device_id="d" * 32, identity_pk=b"i", kem_pk=b"k", scheme="x", now=0)
    with factory() as db:
        assert repos.token_status(db, "qft_second_token_00000", time.time()) == "live"
        assert len(repos.all_devices(db)) == 1


def test_token_and_device_revocation_rules(factory):
    live = _token(factory, "qft_live_token_000000")
    used = _token(factory, "qft_used_token_000000")
    with factory() as db, db.begin():
        assert repos.consume_token(db, "qft_used_token_000000", "e" * 32, time.time())
        repos.add_device(db, device_id="e" * 32, identity_pk=b"i", kem_pk=b"k", scheme="x", now=0)
    with factory() as db, db.begin():
        assert repos.revoke_token(db, live, time.time())
        assert not repos.revoke_token(db, live, time.time())  # already revoked
        assert not repos.revoke_token(db, used, time.time())  # a used token stays "used"
        assert not repos.revoke_token(db, "nope", time.time())
        assert repos.revoke_device(db, "e" * 32, time.time())
        assert not repos.revoke_device(db, "e" * 32, time.time())
    with factory() as db:
        assert repos.token_status(db, "qft_live_token_000000", time.time()) == "revoked"
        assert repos.active_devices(db) == []


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
