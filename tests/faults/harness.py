"""An in-process federation around one :class:`Coordinator`: a fake clock, simulated devices
with :class:`ConstantTrainer` updates, a database whose writes can be made to fail, and a
"crash" (the coordinator object dropped, a new one recovered from the same database).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError

from qflare.crypto import DeterministicRng, Ed25519Signer, SecretBytes
from qflare.ledger import Ledger
from qflare.node import ConstantTrainer
from qflare.protocol.quantize import QuantConfig
from qflare.protocol.wire import SignedResult, Task
from qflare.server.coordinator import Coordinator
from qflare.server.model import ModelStore
from qflare.server.settings import ServerSettings
from qflare.sim.device import SimDevice
from qflare.sim.identities import SimAuthority
from qflare.store import repos
from qflare.store.db import DatabaseUnavailable, make_engine, migrate, session_factory
from qflare.store.models import Round
from qflare.store.repos import SqlLedgerStore

from .helpers import assert_rounds_exact

AUTHORITY = SimAuthority(DeterministicRng(b"fault tests authority"))
_WRITES = ("INSERT", "UPDATE", "DELETE")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class WriteFaults:
    """Makes the database refuse writes like a read-only file does (``sqlite3`` error).

    ``mode``: ``off``; ``always`` (every write fails); ``once`` (every write transaction fails
    its first attempt: after a failure the next one commits, after a commit the next fails).
    ``only``: fail only statements containing this text (a transaction fails half-way).
    ``when``: fail only while this returns true.
    """

    mode: str = "off"
    only: str | None = None
    when: Callable[[], bool] | None = None
    failed: int = 0
    _armed: bool = True

    def attach(self, engine: Engine) -> None:
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "commit", self._committed)

    def _before(self, _conn: Any, _cur: Any, statement: str, *_: Any) -> None:
        if not statement.lstrip().upper().startswith(_WRITES) or self.mode == "off":
            return
        if self.only is not None and self.only not in statement:
            return
        if self.when is not None and not self.when():
            return
        if self.mode == "once" and not self._armed:
            return
        self._armed = False
        self.failed += 1
        orig = sqlite3.OperationalError("attempt to write a readonly database")
        raise OperationalError(statement, None, orig)  # as SQLAlchemy wraps it, for any driver

    def _committed(self, _conn: Any) -> None:
        self._armed = True


class Node(SimDevice):
    """A simulated device that keeps its last signed answer and re-sends it, as nodes do."""

    def __init__(self, index: int, trainer: ConstantTrainer) -> None:
        self.index, self.trainer = index, trainer
        self.signer = Ed25519Signer(SecretBytes(bytes([index + 1]) * 32))
        super().__init__(
            f"dev{index}",
            self.signer,
            trainer.train,
            DeterministicRng(100 + index),
            AUTHORITY.key,
            AUTHORITY.cache,
        )
        self.answer: SignedResult | None = None

    def answer_to(self, task: Task) -> SignedResult:
        last = self.answer
        if last is None or (last.round_id, last.step) != (task.round_id, task.step):
            self.answer = self.handle(task)
        return self.answer


@dataclass
class Federation:
    """``n`` simulated nodes and a coordinator over a SQLite file in ``root``."""

    root: Path
    n: int = 4
    url: str = ""  # default: a SQLite file in ``root``
    settings: dict[str, Any] = field(default_factory=dict)
    faults: WriteFaults = field(default_factory=WriteFaults)
    clock: Clock = field(default_factory=Clock)
    unavailable: int = 0  # 503s the nodes got
    retry_after: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.url or f"sqlite:///{self.root}/db.sqlite"
        values: dict[str, Any] = {
            "database_url": self.url,
            "state_dir": self.root,
            "dataset": "digits",
            "model": "vector:16",
            "min_clients": self.n,
            "signature_scheme": "ed25519",
            "step_timeout_s": 10,
            "round_interval_s": 0,
            "k": self.n,
            "t": self.n // 2 + 1,
            "max_rounds": 1,
            "max_total_weight": 1000,
        }
        self.server_settings = ServerSettings(**(values | self.settings))
        self.nodes = [Node(i, ConstantTrainer(seed=30 + i, weight=3 + i)) for i in range(self.n)]
        self.coord = self.start()
        self._enroll()

    def start(self, faults: bool = True) -> Coordinator:
        """A coordinator recovered from the database (after a "crash", a fresh object)."""
        engine = make_engine(self.url)
        migrate(engine)
        if faults:
            self.faults.attach(engine)
        factory = session_factory(engine)
        models = ModelStore(factory, "digits", self.server_settings.model)
        models.ensure_initial(self.clock())
        coord = Coordinator(
            self.server_settings,
            factory,
            Ledger(SqlLedgerStore(factory)),
            models,
            self.clock,
            DeterministicRng(5),
        )
        coord.recover()
        return coord

    def crash(self) -> Coordinator:
        self.coord = self.start()
        self.see()
        return self.coord

    def _enroll(self) -> None:
        with self.coord._factory() as db, db.begin():
            for node in self.nodes:
                repos.add_device(
                    db,
                    device_id=node.device_id,
                    identity_pk=node.signer.public_key,
                    kem_pk=b"k",
                    scheme="ed25519",
                    now=0,
                    client_index=node.index,
                    certificate=AUTHORITY.certify(node.index, node.signer),
                )
        self.see()

    def see(self, nodes: list[Node] | None = None) -> None:
        for node in nodes or self.nodes:
            self.coord.seen(node.device_id, self.clock())

    def step(self, nodes: list[Node] | None = None) -> int:
        """Every node with a task answers it once; return how many results were accepted."""
        accepted = 0
        for node in nodes or self.nodes:
            task = self.coord.task_for(node.device_id)
            if task is None:
                continue
            try:
                self.coord.submit(node.device_id, node.answer_to(task), node.signer.public_key)
            except DatabaseUnavailable as exc:
                self.unavailable += 1
                self.retry_after.append(exc.retry_after_s)
                continue
            accepted += 1
        return accepted

    def run(self, until: int = 1, limit: int = 400, advance_s: float = 0.3) -> None:
        """Tick and answer until ``until`` rounds are closed (or ``limit`` iterations)."""
        for _ in range(limit):
            self.see()
            self.coord.tick()
            self.step()
            if len(self.closed()) >= until:
                return
            self.clock.now += advance_s
        raise AssertionError(f"fewer than {until} rounds closed: {self.rows()}")

    def rows(self) -> list[Round]:
        with self.coord._factory() as db:
            return list(reversed(repos.rounds(db)))

    def closed(self) -> list[Round]:
        return [r for r in self.rows() if r.closed_at is not None]

    def trainer_of(self, device_id: str) -> ConstantTrainer:
        return next(n.trainer for n in self.nodes if n.device_id == device_id)

    def check(self) -> list[int]:
        """Every stored round against its exact sum; the ids of the completed ones."""
        quant = QuantConfig(self.server_settings.clip, 32, self.server_settings.max_total_weight)
        dim = self.coord._models.weights(0).size
        return assert_rounds_exact(self.url, self.trainer_of, quant, dim)
