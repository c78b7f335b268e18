"""The node's ledger watch: holds cosigned heads on disk, warns on no quorum, stops on a fork."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from qflare.crypto import DeterministicRng, MlDsa65Signer
from qflare.ledger import CosignedHead, Ledger, encode_public_key
from qflare.ledger.merkle import ConsistencyProof
from qflare.ledger.wire import HeadReply
from qflare.node import ConstantTrainer, NetworkError, NodeFatalError, NodeRunner, StateError
from qflare.node.ledger_watch import HEAD_FILE, LedgerWatch, WitnessConfig
from tests.ledger.witness_helpers import cosigned, rewritten

from .fakes import FakeHub, FakeTransport, make_state

SERVER = MlDsa65Signer.generate(DeterministicRng(b"ledger-operator"))
WITNESSES = [MlDsa65Signer.generate(DeterministicRng(f"witness-{i}".encode())) for i in range(2)]
CONFIG = WitnessConfig(tuple(w.public_key for w in WITNESSES), 2)


@dataclass
class FakeSource:
    """A server's ledger endpoints over an in-memory ledger."""

    ledger: Ledger
    witnesses: list[MlDsa65Signer] = field(default_factory=lambda: WITNESSES)
    down: bool = False

    def ledger_head(self) -> HeadReply:
        if self.down:
            raise NetworkError("connection refused")
        head = cosigned(self.ledger, SERVER, self.witnesses) if self.witnesses else None
        head = head or CosignedHead(sth=self.ledger.head(SERVER, 1_000.0))
        return HeadReply(head=head, server_public_key=SERVER.public_key)

    def ledger_consistency(self, first: int, second: int) -> ConsistencyProof:
        return self.ledger.consistency_proof(first, second)


def grow(ledger: Ledger, n: int) -> Ledger:
    for _ in range(n):
        ledger.append("round_complete", "server", {"round": ledger.size}, 10.0 + ledger.size)
    return ledger


def test_heads_are_held_on_disk_across_restarts(tmp_path: Path):
    source = FakeSource(grow(Ledger(), 4))
    watch = LedgerWatch.open(tmp_path, source, SERVER.public_key, CONFIG)
    assert watch.check() is True and watch.held.sth.tree_size == 4
    assert (tmp_path / HEAD_FILE).exists()
    grow(source.ledger, 3)
    again = LedgerWatch.open(tmp_path, source, SERVER.public_key, CONFIG)
    assert again.held.sth.tree_size == 4
    assert again.check() is True and again.held.sth.tree_size == 7


def test_no_quorum_or_no_server_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    source = FakeSource(grow(Ledger(), 4))
    watch = LedgerWatch.open(tmp_path, source, SERVER.public_key, CONFIG)
    watch.check()
    grow(source.ledger, 2)
    source.witnesses = WITNESSES[:1]
    with caplog.at_level(logging.WARNING, logger="qflare.node.ledger"):
        assert watch.check() is False
        source.down = True
        assert watch.check() is False
    assert [r.error for r in caplog.records] == ["QuorumNotMet", "NetworkError"]
    assert watch.held.sth.tree_size == 4


def test_a_fork_stops_the_node(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    honest = grow(Ledger(), 6)
    watch = LedgerWatch.open(tmp_path, FakeSource(honest), SERVER.public_key, CONFIG)
    watch.check()
    forked = LedgerWatch.open(
        tmp_path, FakeSource(rewritten(honest), []), SERVER.public_key, CONFIG
    )
    with caplog.at_level(logging.ERROR), pytest.raises(NodeFatalError, match="fork"):
        forked.check()
    assert [r.getMessage() for r in caplog.records] == ["ledger fork detected"]


def test_a_saved_head_of_another_server_is_refused(tmp_path: Path):
    LedgerWatch.open(tmp_path, FakeSource(grow(Ledger(), 2)), SERVER.public_key, CONFIG).check()
    other = MlDsa65Signer.generate(DeterministicRng(b"other"))
    with pytest.raises(StateError, match="not a head"):
        LedgerWatch.open(tmp_path, FakeSource(Ledger()), other.public_key, CONFIG)


def test_witness_config_from_files(tmp_path: Path):
    paths = []
    for i, w in enumerate(WITNESSES):
        paths.append(tmp_path / f"w{i}.pub")
        paths[-1].write_text(encode_public_key(w.public_key, "ledger witness"))
    assert WitnessConfig.from_files(paths) == CONFIG
    assert WitnessConfig.from_files(paths, 1).quorum == 1
    with pytest.raises(ValueError, match="twice"):
        WitnessConfig.from_files([paths[0], paths[0]])
    with pytest.raises(ValueError, match="quorum"):
        WitnessConfig.from_files(paths, 3)
    (tmp_path / "bad.pub").write_text("mldsa65:AAAA\n")
    with pytest.raises(ValueError, match=r"bad\.pub"):
        WitnessConfig.from_files([tmp_path / "bad.pub"])


def test_the_runner_checks_the_ledger_at_round_start_and_stops_on_a_fork(tmp_path: Path):
    states = [make_state(tmp_path / f"n{i}", f"dev{i}", seed=i) for i in range(3)]
    identities = {i: s.signer().public_key for i, s in enumerate(states)}
    hub = FakeHub(identities, {f"dev{i}": i for i in range(3)})
    calls: list[int] = []

    def fork() -> None:
        raise NodeFatalError("ledger fork detected: test")

    def runner(i: int, check) -> tuple[NodeRunner, FakeTransport]:
        transport = FakeTransport(hub, f"dev{i}")
        run = NodeRunner(
            states[i],
            transport,
            ConstantTrainer(seed=i),
            DeterministicRng(i),
            sleep=lambda _s: None,
            ledger_check=check,
        )
        return run, transport

    honest, _ = runner(0, lambda: calls.append(hub.step))
    assert honest.run_once() is True  # step 0: checked, then answered
    assert calls == [0]
    stopped, transport = runner(1, fork)
    with pytest.raises(NodeFatalError, match="fork"):
        stopped.run(max_rounds=1)
    assert transport.sent == []  # nothing left the node
