import math

import numpy as np
import pytest

from qflare.fl import (
    AggregateResult,
    Aggregator,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedYogi,
    PlainAggregator,
    Strategy,
    build_strategy,
    sample_clients,
    weighted_sum,
)

# Dyadic values: every sum and the division by a total weight of 4 are exact in float32/64.
GLOBAL = np.array([1.0, -2.0, 0.5], dtype=np.float32)
DELTAS = {
    3: (np.array([0.5, 1.0, -0.25], dtype=np.float32), 1),
    8: (np.array([-0.5, 3.0, 0.75], dtype=np.float32), 3),
}


def test_plain_aggregator_reveals_the_exact_weighted_sum() -> None:
    result = PlainAggregator().aggregate(1, DELTAS)
    assert isinstance(PlainAggregator(), Aggregator)
    assert result.weighted_sum.dtype == np.float64
    assert result.weighted_sum.tolist() == [0.5 - 1.5, 1.0 + 9.0, -0.25 + 2.25]
    assert result.total_weight == 4.0 and result.num_clients == 2


def test_fedavg_of_known_deltas_is_the_weighted_mean_exactly() -> None:
    new = FedAvg().apply(GLOBAL, PlainAggregator().aggregate(1, DELTAS))
    expected = np.array([1.0 - 0.25, -2.0 + 2.5, 0.5 + 0.5], dtype=np.float32)
    assert new.dtype == np.float32
    assert np.array_equal(new, expected)
    half = FedAvg(eta=0.5).apply(GLOBAL, PlainAggregator().aggregate(1, DELTAS))
    assert np.array_equal(half, np.array([0.875, -0.75, 0.75], dtype=np.float32))


def _hand_adaptive(
    kind: str, deltas: list[list[float]], eta: float, b1: float, b2: float, tau: float
) -> list[float]:
    """Reddi et al. 2021, Algorithm 2, one coordinate at a time in plain Python."""
    x = [float(v) for v in GLOBAL]
    m = [0.0] * len(x)
    v = [tau * tau] * len(x)
    for delta in deltas:
        for i, d in enumerate(delta):
            m[i] = b1 * m[i] + (1 - b1) * d
            if kind == "adam":
                v[i] = b2 * v[i] + (1 - b2) * d * d
            elif kind == "yogi":
                v[i] = v[i] - (1 - b2) * d * d * math.copysign(1.0, v[i] - d * d)
            else:
                v[i] = v[i] + d * d
            x[i] = x[i] + eta * m[i] / (math.sqrt(v[i]) + tau)
    return x


@pytest.mark.parametrize(
    ("kind", "strategy"),
    [
        ("adam", FedAdam(eta=0.1, beta1=0.9, beta2=0.99, tau=1e-3)),
        ("yogi", FedYogi(eta=0.1, beta1=0.9, beta2=0.99, tau=1e-3)),
        ("adagrad", FedAdagrad(eta=0.1, beta1=0.9, beta2=0.99, tau=1e-3)),
    ],
)
def test_adaptive_servers_match_a_hand_computation(kind: str, strategy: Strategy) -> None:
    # round 2 has tiny deltas so Yogi's sign(v - delta^2) flips to +1
    round2 = {1: (np.array([1e-3, -1e-3, 0.0], dtype=np.float32), 2)}
    strategy.initialize(GLOBAL)
    x1 = strategy.apply(GLOBAL, PlainAggregator().aggregate(1, DELTAS))
    x2 = strategy.apply(x1, PlainAggregator().aggregate(2, round2))
    mean1 = [-0.25, 2.5, 0.5]
    mean2 = [float(np.float32(1e-3)), -float(np.float32(1e-3)), 0.0]
    expected = _hand_adaptive(kind, [mean1, mean2], 0.1, 0.9, 0.99, 1e-3)
    # the strategy keeps its state in float64 and casts the model to float32 each round
    np.testing.assert_allclose(x2, np.array(expected, dtype=np.float32), rtol=1e-6, atol=1e-7)


def test_yogi_and_adam_differ_once_the_sign_flips() -> None:
    adam, yogi = FedAdam(eta=0.1), FedYogi(eta=0.1)
    for s in (adam, yogi):
        s.initialize(GLOBAL)
    small = {0: (np.full(3, 1e-3, dtype=np.float32), 1)}
    xa, xy = GLOBAL, GLOBAL
    for r, updates in enumerate([DELTAS, small, small], start=1):
        xa = adam.apply(xa, PlainAggregator().aggregate(r, updates))
        xy = yogi.apply(xy, PlainAggregator().aggregate(r, updates))
    assert not np.allclose(xa, xy)


def test_an_empty_aggregate_changes_nothing() -> None:
    empty = AggregateResult(np.zeros(0), 0.0, 0)
    assert empty.empty
    for name in ("fedavg", "fedadam", "fedyogi", "fedadagrad"):
        strategy = build_strategy(name)
        strategy.initialize(GLOBAL)
        assert np.array_equal(strategy.apply(GLOBAL, empty), GLOBAL)
    with pytest.raises(ValueError):
        empty.mean()


def test_build_strategy_checks_names_and_params() -> None:
    assert isinstance(build_strategy("FedYogi", {"eta": 0.3, "tau": 1e-2}), FedYogi)
    with pytest.raises(ValueError, match="unknown strategy"):
        build_strategy("fedsgd")
    with pytest.raises(ValueError):
        build_strategy("fedavg", {"beta1": 0.9})
    with pytest.raises(ValueError):
        FedAdam(beta2=1.0)


def test_dropouts_are_deterministic_and_only_survivors_are_summed() -> None:
    updates = {c: (np.full(4, float(c), dtype=np.float32), c + 1) for c in range(20)}
    agg = PlainAggregator(dropout=0.4, seed=5)
    result = agg.aggregate(3, updates)
    alive = agg.survivors(3, sorted(updates))
    assert alive == PlainAggregator(dropout=0.4, seed=5).survivors(3, sorted(updates))
    assert 0 < result.num_clients == len(alive) < 20
    assert result.total_weight == sum(c + 1 for c in alive)
    assert result.weighted_sum[0] == sum(c * (c + 1) for c in alive)


def test_weighted_sum_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        weighted_sum({0: (np.zeros(2, dtype=np.float32), 1), 1: (np.zeros(3, dtype=np.float32), 1)})


def test_sample_clients_is_seeded_and_sized() -> None:
    a = sample_clients(50, 0.2, np.random.default_rng(1))
    b = sample_clients(50, 0.2, np.random.default_rng(1))
    assert a == b and len(a) == 10 and len(set(a)) == 10 and a == sorted(a)
    assert sample_clients(10, 0.01, np.random.default_rng(0), min_clients=3).__len__() == 3
    assert sample_clients(4, 1.0, np.random.default_rng(0)) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        sample_clients(10, 0.0, np.random.default_rng(0))
