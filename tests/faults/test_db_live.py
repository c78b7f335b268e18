"""Real file-system faults under a live server: read-only database files (``chattr +i``, which
binds root too) and a full disk (a small tmpfs), mid-round; a database that is not writable at
start-up; admin commands on such a database. Clients get 503 with ``Retry-After``, never 500."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from qflare.authority.store import AuthorityStore
from qflare.crypto import DeterministicRng, SignatureScheme, SystemRng
from qflare.node import (
    ConstantTrainer,
    HttpApi,
    NodeRunner,
    NodeSession,
    NodeState,
    RetryPolicy,
    RunReport,
    enroll,
)
from qflare.protocol.quantize import QuantConfig
from qflare.server.app import build_context
from qflare.server.settings import ServerSettings
from qflare.store.db import DatabaseNotWritable, make_engine, migrate
from tests.faults.mounts import fill, immutable
from tests.node.conftest import LiveServer, start_server, stop_server

from .helpers import assert_rounds_exact
from .test_restarts import Gate

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

N = 3
SETTINGS = {"model": "vector:16", "min_clients": N, "max_clients": N, "step_timeout_s": 6.0}
SETTINGS |= {"max_total_weight": 1000}
MASKED = 2  # the step of the masked inputs (complete graph of three: R0, R1, R2, ...)


class Recording(httpx.HTTPTransport):
    """Keeps the status and Retry-After of every response a node receives."""

    def __init__(self, seen: list[tuple[int, str | None]]) -> None:
        super().__init__()
        self.seen = seen

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.seen.append((response.status_code, response.headers.get("retry-after")))
        return response


def _enroll(live: LiveServer, root: Path) -> NodeState:
    with HttpApi(live.url, insecure=True) as api:
        enroll(root, api, live.new_token(), scheme=SignatureScheme.ED25519, rng=SystemRng())
    return NodeState.open(root)


def _round_with_a_fault(
    tmp_path: Path, database: Path, fault: Callable[[], Iterator[None]]
) -> list[tuple[int, str | None]]:
    """Three nodes run one round; ``fault`` is active while their masked inputs arrive."""
    live = start_server(tmp_path, database_url=f"sqlite:///{database}", **SETTINGS)
    states = [_enroll(live, tmp_path / f"node{i}") for i in range(N)]
    trainers = [ConstantTrainer(seed=70 + i, weight=3 + i) for i in range(N)]
    gates = [Gate(range(MASKED, MASKED + 1)) for _ in range(N)]
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()
    reports: list[RunReport] = []

    def work(i: int) -> None:
        api = HttpApi(live.url, insecure=True, transport=Recording(seen))
        session = NodeSession(
            api,
            states[i].require_device(),
            states[i].signer(),
            rng=SystemRng(),
            clock=time.time,
            sleep=stop.wait,
            policy=RetryPolicy(),
            stop_event=stop,
        )
        gates[i].inner = session
        runner = NodeRunner(states[i], gates[i], trainers[i], DeterministicRng(i), poll_wait=1.0)
        try:
            reports.append(runner.run(max_rounds=1, stop_event=stop))
        finally:
            session.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    coord = live.server.config.app.state.ctx.coordinator
    try:
        _wait(lambda: coord.live is not None and coord.live.step == MASKED)
        time.sleep(0.3)  # the nodes hold their masked inputs
        with fault():
            for gate in gates:
                gate.release()
            _wait(lambda: sum(s == 503 for s, _ in seen) >= N)
            time.sleep(2.0)  # a few retries meet the fault
        for t in threads:
            t.join(timeout=60)
    finally:
        stop.set()
        for gate in gates:
            gate.release()
        stop_server(live)
    assert len(reports) == N and all(r.completed == 1 and r.dropped == 0 for r in reports)
    trainer_of = {s.require_device().device_id: t for s, t in zip(states, trainers, strict=True)}
    quant = QuantConfig(1.0, 32, 1000)
    assert assert_rounds_exact(live.settings.database_url, trainer_of.__getitem__, quant, 16) == [1]
    assert not [s for s, _ in seen if s >= 500 and s != 503]
    assert all(after is not None and int(after) >= 1 for s, after in seen if s == 503)
    return seen


def _wait(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_read_only_database_files_mid_round(tmp_path: Path, ext4_dir: Path) -> None:
    db = ext4_dir / "db.sqlite"

    def read_only() -> Iterator[None]:
        with immutable(db, db.with_name("db.sqlite-wal")):  # (never -shm: it is mapped)
            yield

    seen = _round_with_a_fault(tmp_path, db, contextlib.contextmanager(read_only))
    assert sum(s == 503 for s, _ in seen) >= N


def test_a_full_disk_mid_round(tmp_path: Path, small_tmpfs: Path) -> None:
    db = small_tmpfs / "db.sqlite"

    def full() -> Iterator[None]:
        filler = fill(small_tmpfs)
        try:
            yield
        finally:
            filler.unlink()

    seen = _round_with_a_fault(tmp_path, db, contextlib.contextmanager(full))
    assert sum(s == 503 for s, _ in seen) >= N


# ---- start-up and admin commands ----------------------------------------------------------------


def _settings(tmp_path: Path, db: Path) -> ServerSettings:
    return ServerSettings(
        database_url=f"sqlite:///{db}",
        state_dir=tmp_path / "server",
        insecure=True,
        dev=True,
        dataset="digits",
        model="vector:16",
    )


def _qflare(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "qflare.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_a_read_only_database_is_refused_at_start_up_in_one_line(
    tmp_path: Path, ext4_dir: Path
) -> None:
    db = ext4_dir / "db.sqlite"
    engine = make_engine(f"sqlite:///{db}")
    migrate(engine)
    engine.dispose()
    settings = _settings(tmp_path, db)
    (tmp_path / "server.json").write_text(settings.model_dump_json())
    with immutable(db):
        with pytest.raises(DatabaseNotWritable, match="is not writable"):
            build_context(settings, time.time, SystemRng())
        out = _qflare("server", "--config", str(tmp_path / "server.json"))
        revoke = _qflare("device", "revoke", "x", "--config", str(tmp_path / "server.json"))
    assert out.returncode == 2, out.stderr
    assert "refusing to start" in out.stderr and "not writable" in out.stderr
    assert "Traceback" not in out.stderr
    assert revoke.returncode == 1 and "Traceback" not in revoke.stderr
    assert revoke.stderr.strip().startswith("error:") and len(revoke.stderr.splitlines()) == 1


def test_token_create_on_a_read_only_authority_database_prints_one_line(
    tmp_path: Path, ext4_dir: Path
) -> None:
    directory = ext4_dir / "authority"
    assert _qflare("authority", "init", "--dir", str(directory)).returncode == 0
    AuthorityStore(f"sqlite:///{directory / 'authority.sqlite'}").close()  # its database
    with immutable(directory / "authority.sqlite"):
        out = _qflare("authority", "token", "create", "--dir", str(directory))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error:") and len(out.stderr.splitlines()) == 1
    assert "not writable" in out.stderr or "readonly" in out.stderr
