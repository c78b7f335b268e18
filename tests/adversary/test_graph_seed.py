"""Attack 3: a server that grinds the neighbour graph.

The SecAgg+ finder's bound assumes a random graph; a server that picked the permutation seed could
try seeds until a victim's neighbourhood is full of clients it controls. The seed now comes from a
commit-then-reveal among the participants (:mod:`qflare.protocol.seed`).
"""

from __future__ import annotations

import msgspec

from qflare.protocol import messages as m
from qflare.protocol.errors import AbortReason
from qflare.protocol.secagg import State
from qflare.protocol.seed import SeedCollector, SeedParticipant, commitment
from qflare.sim.cohort import Cohort
from tests.adversary.helpers import exact
from tests.protocol.helpers import authority, config, inputs, signers

N = 12
CFG = config(N, 7, 4)  # sparse: k < n


def _run(seed: int, **kwargs):
    cohort = Cohort(CFG, seed=seed, signers=signers(N), authority=authority(N), **kwargs)
    return cohort, cohort.run(inputs(CFG.dim))


def test_every_client_derives_the_same_graph_and_the_server_does_not_choose_it():
    cohort_a, res_a = _run(1)
    cohort_b, res_b = _run(2)
    assert exact(res_a, CFG) and exact(res_b, CFG)
    seeds_a = {c.graph_seed for c in cohort_a.clients.values()}
    seeds_b = {c.graph_seed for c in cohort_b.clients.values()}
    assert len(seeds_a) == len(seeds_b) == 1  # one graph per round, agreed by all
    assert seeds_a != seeds_b  # fresh client randomness: a server replaying itself gets another


def test_a_reveal_that_does_not_open_its_commitment_is_refused():
    def lie(u: int, msg: m.ServerMessage) -> m.ServerMessage:
        if isinstance(msg, m.KeyDirectory) and u == 0:
            reveals = {**msg.reveals, 5: bytes(32)}  # the server tries to steer the seed
            return msgspec.structs.replace(msg, reveals=reveals)
        return msg

    _, res = _run(3, server_hook=lie)
    err = res.client_errors[0]
    assert err.reason is AbortReason.INCONSISTENT_VIEW and "do not open" in str(err)
    assert res.server_state is State.COMPLETED and 0 not in res.survivors and exact(res, CFG)


def test_a_commitment_list_without_ours_or_with_strangers_is_refused():
    def drop_ours(u: int, msg: m.ServerMessage) -> m.ServerMessage:
        if isinstance(msg, m.SeedCommitments) and u == 1:
            rest = {v: c for v, c in msg.commitments.items() if v != 1}
            return msgspec.structs.replace(msg, commitments=rest)
        return msg

    _, res = _run(4, server_hook=drop_ours)
    assert res.client_errors[1].reason is AbortReason.INCONSISTENT_VIEW
    assert exact(res, CFG)


def test_a_server_that_restarts_the_seed_too_often_is_refused():
    """Each restart lets the server draw one more graph: clients cap them (default 2)."""
    p = SeedParticipant("scope", 0, _Rng(), max_restarts=2)
    members = frozenset(range(4))
    commits = {0: p.first_commitment, **{v: bytes(32) for v in range(1, 4)}}
    for attempt in range(3):
        _, nxt = p.on_commitments(attempt, commits, members, 3, state="R0")
        commits = {0: nxt, **{v: bytes(32) for v in range(1, 4)}}
    try:
        p.on_commitments(3, commits, members, 3, state="R0")
    except Exception as exc:
        assert getattr(exc, "reason", None) is AbortReason.SEED_WITHHELD
    else:
        raise AssertionError("a fourth attempt was accepted")


def test_a_withheld_reveal_restarts_among_the_others_and_the_round_completes():
    _, res = _run(5, dropouts={3: State.R0_REVEAL_SEED, 8: State.R0_REVEAL_SEED})
    assert res.server_state is State.COMPLETED
    assert 3 not in res.survivors and 8 not in res.survivors and exact(res, CFG)


def test_the_collector_refuses_a_reveal_that_does_not_match_and_gives_up_after_restarts():
    c = SeedCollector("s", max_restarts=1)
    c.commit(0, commitment("s", 0, 0, b"a" * 32))
    c.commit(1, commitment("s", 1, 0, b"b" * 32))
    try:
        c.reveal(0, 0, b"x" * 32, bytes(32))
    except ValueError:
        pass
    else:
        raise AssertionError("a wrong reveal was accepted")
    c.reveal(0, 0, b"a" * 32, commitment("s", 0, 1, b"c" * 32))
    assert c.close() is None and c.attempt == 1  # 1 withheld: one restart
    try:
        c.close()
    except ValueError:
        pass
    else:
        raise AssertionError("the collector restarted beyond its limit")


class _Rng:
    def __init__(self) -> None:
        self.n = 0

    def random_bytes(self, n: int) -> bytes:
        self.n += 1
        return bytes([self.n % 256]) * n
