"""Exact aggregates under random dropout patterns at every round (hypothesis)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.protocol.secagg import ROUNDS, State
from qflare.sim.cohort import Cohort, expected_sum
from tests.protocol.helpers import config, inputs, signers

N = 8
DROP = st.dictionaries(st.integers(0, N - 1), st.sampled_from(ROUNDS), max_size=N)


def _sent(dropouts: dict[int, State], u: int, stage: State) -> bool:
    """Whether client ``u`` sends its message of ``stage`` (it goes silent at its dropout round)."""
    order = list(State)
    return u not in dropouts or order.index(dropouts[u]) > order.index(stage)


def _alive_through(dropouts: dict[int, State], stage: State) -> int:
    return sum(_sent(dropouts, u, stage) for u in range(N))


@settings(max_examples=250)
@given(dropouts=DROP, t=st.integers(5, 8), seed=st.integers(0, 2**31))
def test_complete_graph_exact_sum_or_clean_abort(dropouts, t, seed):
    """Every threshold the clients' policy accepts for n=8 (2t > 8)."""
    cfg = config(N, N, t)
    res = Cohort(cfg, seed=seed, dropouts=dropouts, signers=signers(N)).run(inputs(cfg.dim))
    must_complete = all(_alive_through(dropouts, s) >= t for s in ROUNDS)
    if must_complete:
        assert res.server_state is State.COMPLETED, res.server_errors
    if res.server_state is State.COMPLETED:
        assert res.total is not None
        sent_masked_input = tuple(u for u in range(N) if _sent(dropouts, u, State.R2_MASKED_INPUT))
        assert res.survivors == sent_masked_input
        assert np.array_equal(res.total, expected_sum(inputs(cfg.dim), res.survivors, cfg.dim, 32))
    else:
        assert res.total is None
        assert res.server_state is State.ABORTED
    assert not res.client_errors


@settings(max_examples=150)
@given(
    dropouts=st.dictionaries(st.integers(0, 11), st.sampled_from(ROUNDS), max_size=4),
    seed=st.integers(0, 2**31),
    bits=st.sampled_from([32, 64]),
)
def test_sparse_graph_exact_sum(dropouts, seed, bits):
    n = 12
    cfg = config(n, 7, 4, dim=24, bits=bits)
    res = Cohort(cfg, seed=seed, dropouts=dropouts, signers=signers(n)).run(inputs(cfg.dim, bits))
    if res.server_state is State.COMPLETED:
        assert np.array_equal(
            res.total, expected_sum(inputs(cfg.dim, bits), res.survivors, cfg.dim, bits)
        )
        expected_survivors = [u for u in range(n) if _sent(dropouts, u, State.R2_MASKED_INPUT)]
        # Clients excluded for having too few live neighbours are dropouts too.
        assert set(res.survivors) <= set(expected_survivors)
    else:
        assert res.total is None
    # Dropouts concentrated in one neighbourhood may legitimately abort: only as a threshold abort.
    for err in res.server_errors:
        assert err.reason.value in {"too_few_clients", "reconstruction_failed", "seed_withheld"}


def test_no_dropouts_sparse_40_clients_exact():
    cfg = config(40, 13, 8, dim=64)  # the parameter finder's answer for n = 40
    res = Cohort(cfg, seed=1, signers=signers(40)).run(inputs(cfg.dim))
    assert res.server_state is State.COMPLETED
    assert res.survivors == tuple(range(40))
    assert np.array_equal(res.total, expected_sum(inputs(cfg.dim), res.survivors, cfg.dim, 32))


def test_mldsa_identities_full_round_exact():
    cfg = config(6, 6, 4, scheme="mldsa65")
    res = Cohort(
        cfg,
        seed=2,
        dropouts={1: State.R2_MASKED_INPUT, 4: State.R4_UNMASK},
        signers=signers(6, "mldsa65"),
    ).run(inputs(cfg.dim))
    assert res.server_state is State.COMPLETED
    assert res.survivors == (0, 2, 3, 4, 5)
    assert np.array_equal(res.total, expected_sum(inputs(cfg.dim), res.survivors, cfg.dim, 32))
