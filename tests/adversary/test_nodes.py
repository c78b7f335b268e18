"""The same attacks against real node code: the runner behind a hub that lies, and a live server.

The node's runner checks the server's round parameters and every peer certificate before any
training or key exists; a refusal goes back to the server as a signed notice that the operator
sees in ``qflare device list``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from typer.testing import CliRunner

from qflare.cli.app import app
from qflare.crypto import DeterministicRng, Ed25519Signer, SignatureScheme, SystemRng
from qflare.node import ConstantTrainer, HttpApi, NodeRunner, NodeSession, NodeState, enroll
from qflare.node.session import RetryPolicy
from qflare.protocol import messages as m
from qflare.protocol.secagg import State
from qflare.sim.identities import SimAuthority
from tests.node.conftest import start_server, stop_server
from tests.node.fakes import FakeHub, FakeTransport, make_state

N = 4


def _nodes(tmp_path: Path, **hub: object):
    states = [make_state(tmp_path / f"n{i}", f"dev{i}", seed=i) for i in range(N)]
    identities = {i: s.signer().public_key for i, s in enumerate(states)}
    fake = FakeHub(identities, {f"dev{i}": i for i in range(N)}, **hub)  # type: ignore[arg-type]
    transports = [FakeTransport(fake, f"dev{i}") for i in range(N)]
    runners = [
        NodeRunner(s, tr, ConstantTrainer(seed=i, weight=1), DeterministicRng(50 + i))
        for i, (s, tr) in enumerate(zip(states, transports, strict=True))
    ]
    return fake, transports, runners


def test_a_weak_threshold_is_declined_by_every_node_before_any_key(tmp_path):
    fake, _, runners = _nodes(tmp_path, t=2)  # 2 of 4: the split-view attack
    for r in runners:
        assert r.run_once()  # each sends one signed notice instead of its keys
    assert [i for i, _ in fake.notices] == list(range(N))
    for _, notice in fake.notices:
        assert notice.kind == "declined" and notice.reason == "params_refused"
        assert "threshold_is_majority" in notice.detail
    assert not fake.accepted  # no advertisement, no share, nothing
    assert all(not (r._registry.used()) for r in runners)  # no round id was even claimed


def test_a_substituted_peer_certificate_receives_no_share(tmp_path):
    fake, _, runners = _nodes(tmp_path, t=3)
    evil = SimAuthority(DeterministicRng(b"evil"))
    impostor = Ed25519Signer.generate(DeterministicRng(b"impostor"))
    fake.certificates[3] = evil.certify_key(3, SignatureScheme.ED25519, impostor.public_key)
    for _ in range(6):
        for r in runners:
            r.run_once()
        if fake.machine.state is State.R2_MASKED_INPUT:
            break
    shares = [m.decode_client(a.message) for a in fake.accepted]
    shares = [s for s in shares if isinstance(s, m.EncryptedShares)]
    assert {s.sender for s in shares} == {0, 1, 2}  # 3's own node declined: it is misnamed
    assert all(3 not in s.ciphertexts for s in shares)  # nobody encrypted to the impostor
    assert [i for i, _ in fake.notices] == [3]
    assert fake.notices[0][1].reason == "inconsistent_view"


def test_operator_sees_why_a_node_declined_in_device_list(tmp_path):
    """A live server configured with k = n, t = 2 for four nodes: each node says no, signed."""
    live = start_server(
        tmp_path, protocol="secagg", min_clients=N, max_clients=N, k=N, t=2, step_timeout_s=3.0
    )
    stop = threading.Event()
    try:
        roots = [tmp_path / f"node{i}" for i in range(N)]
        for root in roots:
            with HttpApi(live.url, insecure=True) as api:
                enroll(root, api, live.new_token(), scheme=SignatureScheme.ED25519, rng=SystemRng())
        threads = [threading.Thread(target=_run, args=(live.url, r, stop)) for r in roots]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _all_declined(live.settings.database_url):
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(timeout=20)
        out = CliRunner().invoke(
            app, ["device", "list", "--database-url", live.settings.database_url]
        )
        assert out.exit_code == 0, out.output
        assert out.output.count("params_refused") == N
    finally:
        stop.set()
        stop_server(live)


def _run(url: str, root: Path, stop: threading.Event) -> None:
    state = NodeState.open(root)
    session = NodeSession(
        HttpApi(url, insecure=True),
        state.require_device(),
        state.signer(),
        rng=SystemRng(),
        clock=time.time,
        sleep=stop.wait,
        policy=RetryPolicy(initial_s=0.05, max_delay_s=0.5),
        stop_event=stop,
    )
    trainer = ConstantTrainer(seed=1, weight=1)
    try:
        NodeRunner(state, session, trainer, SystemRng(), poll_wait=0.5, pause_s=0.1).run(
            stop_event=stop
        )
    finally:
        session.close()


def _all_declined(url: str) -> bool:
    from qflare.store.db import make_engine, session_factory
    from qflare.store.models import Device

    with session_factory(make_engine(url))() as db:
        notices = [d.last_notice or "" for d in db.query(Device).all()]
    return len(notices) == N and all("params_refused" in n for n in notices)
