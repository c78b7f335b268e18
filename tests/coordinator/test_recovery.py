"""The coordinator driven directly: a full round, and a crash at every step resumed from the DB."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.crypto import DeterministicRng, Ed25519Signer, SecretBytes
from qflare.ledger import Ledger
from qflare.protocol.quantize import dequantize
from qflare.protocol.secagg import State
from qflare.protocol.wire import SignedResult, Task
from qflare.server.coordinator import Coordinator
from qflare.server.model import ModelStore
from qflare.server.settings import ServerSettings
from qflare.sim.device import SimDevice
from qflare.sim.identities import SimAuthority
from qflare.store import repos
from qflare.store.db import make_engine, migrate, session_factory
from qflare.store.repos import SqlLedgerStore

N = 4
AUTHORITY = SimAuthority(DeterministicRng(b"coordinator tests authority"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _server(url: str, tmp_path, clock: Clock, n: int = N, k: int = N) -> Coordinator:
    settings = ServerSettings(
        database_url=url,
        state_dir=tmp_path,
        dataset="digits",
        min_clients=n,
        signature_scheme="ed25519",
        step_timeout_s=10,
        round_interval_s=0,
        k=k,
        t=3,
        max_rounds=1,
    )
    engine = make_engine(url)
    migrate(engine)
    factory = session_factory(engine)
    models = ModelStore(factory, "digits", None)
    models.ensure_initial(clock())
    coord = Coordinator(
        settings, factory, Ledger(SqlLedgerStore(factory)), models, clock, DeterministicRng(5)
    )
    coord.recover()
    return coord


class Node(SimDevice):
    """A device whose update is a fixed pseudo-random delta with weight 10."""

    def __init__(self, index: int, device_id: str) -> None:
        self.index = index
        self.delta: np.ndarray | None = None
        signer = Ed25519Signer(SecretBytes(bytes([index + 1]) * 32))
        super().__init__(
            device_id,
            signer,
            self._train,
            DeterministicRng(100 + index),
            AUTHORITY.key,
            AUTHORITY.cache,
        )

    def _train(self, weights: np.ndarray, round_id: int) -> tuple[np.ndarray, int]:
        self.delta = (
            np.random.default_rng(self.index).normal(0, 0.01, weights.size).astype(np.float32)
        )
        return self.delta, 10

    def step(self, task: Task) -> SignedResult:
        return self.handle(task)


def _enroll(coord: Coordinator, n: int = N) -> list[Node]:
    nodes = []
    with coord._factory() as db, db.begin():
        for i in range(n):
            node = Node(i, f"dev{i}")
            repos.add_device(
                db,
                device_id=node.device_id,
                identity_pk=node.signer.public_key,
                kem_pk=b"k",
                scheme="ed25519",
                now=0,
                client_index=i,
                certificate=AUTHORITY.certify(i, node.signer),
            )
            nodes.append(node)
    for node in nodes:
        coord.seen(node.device_id, coord._clock())
    return nodes


def _drive(
    coord: Coordinator,
    nodes: list[Node],
    clock: Clock,
    crash_after: int | None,
    url: str,
    tmp_path,
    restart=None,
) -> tuple[Coordinator, bytes]:
    coord.tick()
    assert coord.live is not None
    round_id = coord.live.round_id
    submitted = 0
    while coord.live is not None:
        for node in nodes:
            task = coord.task_for(node.device_id)
            if task is None:
                continue
            coord.submit(node.device_id, node.step(task), node.signer.public_key)
            submitted += 1
            if crash_after is not None and submitted == crash_after:
                coord = (restart or _server)(url, tmp_path, clock)  # the old one is dropped
                assert coord.live is not None and coord.live.round_id == round_id
        clock.now += 0.1
        coord.tick()
    with coord._factory() as db:
        row = db.get(repos.Round, round_id)  # type: ignore[attr-defined]
        assert row is not None and row.state == State.COMPLETED.value and row.result is not None
        return coord, row.result


@pytest.mark.parametrize("crash_after", [None, 1, 4, 5, 9, 11, 14, 16, 19])
def test_round_completes_identically_after_a_crash(tmp_path, crash_after):
    url = f"sqlite:///{tmp_path}/db.sqlite"
    clock = Clock()
    coord = _server(url, tmp_path, clock)
    nodes = _enroll(coord)
    coord, result = _drive(coord, nodes, clock, crash_after, url, tmp_path)
    total, weight = dequantize(np.frombuffer(result, dtype=np.uint32).copy(), coord.quant)
    expected = sum(10 * n.delta.astype(np.float64) for n in nodes)
    assert weight == 10 * N
    assert np.max(np.abs(total - expected)) <= weight / coord.quant.scale
    version, weights = coord._models.latest()
    assert version == 1
    assert np.all(np.isfinite(weights))
    # Identical to a crash-free run: the ring sum only depends on the quantised inputs.
    ref_path = tmp_path / "ref"
    ref_path.mkdir()
    ref_clock = Clock()
    ref = _server(f"sqlite:///{ref_path}/db.sqlite", ref_path, ref_clock)
    _, ref_result = _drive(ref, _enroll(ref), ref_clock, None, "", ref_path)
    assert ref_result == result


def test_silent_device_becomes_dropout_after_deadline(tmp_path):
    url = f"sqlite:///{tmp_path}/db.sqlite"
    clock = Clock()
    coord = _server(url, tmp_path, clock)
    nodes = _enroll(coord)
    coord.tick()
    while coord.live is not None:
        worked = False
        for node in nodes[:3]:  # nodes[3] stays silent from the start
            task = coord.task_for(node.device_id)
            if task is not None:
                coord.submit(node.device_id, node.step(task), node.signer.public_key)
                worked = True
        clock.now += 0.1 if worked else 11  # only the silent device is late: pass its deadline
        coord.tick()
    with coord._factory() as db:
        row = repos.rounds(db)[0]
    assert row.state == State.COMPLETED.value
    total, weight = dequantize(np.frombuffer(row.result, dtype=np.uint32).copy(), coord.quant)
    assert weight == 30
    expected = sum(10 * n.delta.astype(np.float64) for n in nodes[:3])
    assert np.max(np.abs(total - expected)) <= weight / coord.quant.scale


def test_classic_secagg_uses_the_complete_graph(tmp_path):
    clock = Clock()
    coord = _server(f"sqlite:///{tmp_path}/db.sqlite", tmp_path, clock)
    coord.settings = coord.settings.model_copy(update={"k": None, "t": None, "protocol": "secagg"})
    assert coord.graph_params(7) == (7, 4)
    coord.settings = coord.settings.model_copy(update={"protocol": "secagg+"})
    k, t = coord.graph_params(200)
    assert k < 200 and 2 * t > k


@pytest.mark.parametrize("crash_after", [6, 8, 14, 20])
def test_a_sparse_round_with_its_seed_step_resumes_identically(tmp_path, crash_after):
    """n = 6, k = 5: the graph-seed exchange is replayed from the log like every other step."""

    def server(url: str, path, clock: Clock) -> Coordinator:
        return _server(url, path, clock, n=6, k=5)

    url, clock = f"sqlite:///{tmp_path}/db.sqlite", Clock()
    coord = server(url, tmp_path, clock)
    nodes = _enroll(coord, 6)
    coord, result = _drive(coord, nodes, clock, crash_after, url, tmp_path, restart=server)
    total, weight = dequantize(np.frombuffer(result, dtype=np.uint32).copy(), coord.quant)
    assert weight == 60
    expected = sum(10 * n.delta.astype(np.float64) for n in nodes)
    assert np.max(np.abs(total - expected)) <= weight / coord.quant.scale
