"""Attack 7 (rewriting history): whoever can write ``audit_entries`` rewrites and re-chains it,
then the server restarts and signs a head over the forged history. Everyone notices.

Real HTTP on loopback, everything in this process: two witnesses and the server run in uvicorn
threads; the node's ledger watch and ``qflare ledger verify`` talk to the server as they would
from another machine.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from qflare.cli.app import app
from qflare.crypto import SystemRng
from qflare.ledger import (
    GENESIS_HASH,
    Ledger,
    chain_link,
    decode_entry,
    encode_entry,
    verify_cosigned_head,
)
from qflare.node.ledger_watch import LedgerWatch, WitnessConfig
from qflare.node.session import NodeFatalError
from qflare.node.transport import HttpApi
from qflare.server.identity import load_or_create_identity
from qflare.store.db import make_engine, session_factory
from qflare.store.repos import SqlLedgerStore
from tests.node.conftest import LiveServer, start_server, stop_server
from tests.witness.helpers import LiveWitness, serve_witness

cli = CliRunner()


def operator_append(live: LiveServer, count: int) -> None:
    """Append entries as ``qflare token create`` does: from outside the server process."""
    engine = make_engine(live.settings.database_url)
    ledger = Ledger(SqlLedgerStore(session_factory(engine)))
    for _ in range(count):
        ledger.append("token_create", "operator", {"token_id": f"t{ledger.size}"}, time.time())
    engine.dispose()


def rewrite_history(database: Path, index: int) -> None:
    """Edit entry ``index`` and repair every ``prev_hash`` after it, straight in SQLite."""
    with sqlite3.connect(database) as db:
        rows = db.execute('SELECT "index", data FROM audit_entries ORDER BY "index"').fetchall()
        link = GENESIS_HASH
        for idx, data in rows:
            entry = decode_entry(data)
            if idx == index:
                entry = msgspec.structs.replace(entry, actor="someone-else")
            entry = msgspec.structs.replace(entry, prev_hash=link)
            fixed = encode_entry(entry)
            link = chain_link(link, fixed)
            db.execute('UPDATE audit_entries SET data = ? WHERE "index" = ?', (fixed, idx))


def wait_for(what: str, predicate: Callable[[], bool], timeout_s: float = 20) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(what)


def verify(live: LiveServer, witnesses: list[LiveWitness], *extra: str):
    args = ["ledger", "verify", "--server", live.url, "--insecure"]
    for w in witnesses:
        args += ["--witness-key", str(w.key_file)]
    return cli.invoke(app, [*args, *extra])


@pytest.fixture
def witnesses(tmp_path: Path):
    server_key = load_or_create_identity(tmp_path / "server", SystemRng()).public_key
    started = [serve_witness(tmp_path / f"witness{i}", server_key, seed=i) for i in range(2)]
    yield started
    for w in started:
        w.stop()


def test_a_rewritten_and_rechained_ledger_is_detected_after_a_restart(
    tmp_path: Path, witnesses: list[LiveWitness], caplog: pytest.LogCaptureFixture
):
    settings = {
        "witness_urls": [w.url for w in witnesses],
        "witness_keys": [w.key_file for w in witnesses],
        "witness_interval_s": 0.05,
    }
    live = start_server(tmp_path, **settings)
    api = HttpApi(live.url, insecure=True)
    keys = WitnessConfig(tuple(w.public_key for w in witnesses), 2)
    server_key = api.ledger_head().server_public_key
    (tmp_path / "node").mkdir()
    watch = LedgerWatch.open(tmp_path / "node", api, server_key, keys)
    state = tmp_path / "auditor.state"
    try:
        # -- honest history, cosigned by both witnesses, seen by a node and an auditor ----------
        operator_append(live, 6)
        wait_for(
            "a cosigned head of 6 entries",
            lambda: (h := api.ledger_head().head).sth.tree_size == 6 and len(h.cosignatures) == 2,
        )
        verify_cosigned_head(api.ledger_head().head, keys.keys, 2, server_key)
        assert watch.check() is True
        assert watch.held.sth.tree_size == 6
        ok = verify(live, witnesses, "--state", str(state))
        assert ok.exit_code == 0, ok.output
        assert "OK" in ok.output and "2 of 2 witnesses" in ok.output
        honest_root = watch.held.sth.root_hash

        # -- the attack: rewrite and re-chain the table while the server is down, restart ---------
        stop_server(live)
        rewrite_history(tmp_path / "db.sqlite", index=2)
        with caplog.at_level(logging.INFO, logger="qflare"):
            live = start_server(tmp_path, port=int(live.url.rsplit(":", 1)[1]), **settings)
            assert any("ledger fork detected" in r.getMessage() for r in caplog.records)
            operator_append(live, 1)  # the server goes on with its forged history
            wait_for(
                "both witnesses refusing",
                lambda: (
                    sum(
                        "witness refused to cosign: ledger fork detected" in r.getMessage()
                        for r in caplog.records
                    )
                    >= 2
                ),
            )

            # the witnesses did not move
            for w in witnesses:
                assert (w.service.state.tree_size, w.service.state.root_hash) == (6, honest_root)
            served = api.ledger_head().head
            assert served.sth.tree_size >= 6 and served.cosignatures == ()

            # the node holding the honest head refuses the new one, for good
            with pytest.raises(NodeFatalError, match="ledger fork detected"):
                watch.check()
            assert any(
                r.name == "qflare.node.ledger" and r.getMessage() == "ledger fork detected"
                for r in caplog.records
            )
        # the outside auditor fails, with its saved head or without it
        forked = verify(live, witnesses, "--state", str(state))
        assert forked.exit_code == 1
        assert "LEDGER FORK DETECTED" in forked.output
        fresh = verify(live, witnesses)
        assert fresh.exit_code == 1 and "QuorumNotMet" in fresh.output
    finally:
        api.close()
        stop_server(live)
