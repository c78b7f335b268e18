import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from qflare.fl import AggregateResult, Dataset, PlainAggregator, Update
from qflare.sim.federated import FederatedConfig, RoundMetrics, run_federated
from qflare.sim.report import plot_accuracy, write_metrics_json

QUICK = FederatedConfig(dataset="digits", num_clients=5, rounds=3, seed=0)


def test_a_three_round_digits_federation_learns(digits: Dataset) -> None:
    seen: list[tuple[int, RoundMetrics]] = []
    result = run_federated(
        QUICK, PlainAggregator(), data=digits, progress=lambda r, m: seen.append((r, m))
    )
    assert [r for r, _ in seen] == [1, 2, 3]
    assert [m.round_id for m in result.history] == [0, 1, 2, 3]
    assert result.history[0].accuracy < 0.25  # untrained: near chance (0.1)
    assert result.final_accuracy > 0.7
    assert all(m.participants == m.sampled == 5 for m in result.history[1:])
    assert sum(result.client_sizes) == len(digits.y_train)


def test_a_seed_reproduces_a_run_exactly(digits: Dataset) -> None:
    config = FederatedConfig(num_clients=4, rounds=2, partition="dirichlet:0.5", fraction_fit=0.5)
    a = run_federated(config, PlainAggregator(), data=digits)
    b = run_federated(config, PlainAggregator(), data=digits)
    assert np.array_equal(a.final_weights, b.final_weights)
    assert [m.accuracy for m in a.history] == [m.accuracy for m in b.history]
    assert all(m.sampled == 2 for m in a.history[1:])


class _CountingAggregator:
    """Records what it was given and drops client 0 every round."""

    def __init__(self) -> None:
        self.rounds: list[int] = []
        self.weights: list[dict[int, int]] = []

    def aggregate(self, round_id: int, updates: Mapping[int, Update]) -> AggregateResult:
        self.rounds.append(round_id)
        self.weights.append({c: w for c, (_, w) in updates.items()})
        kept = {c: u for c, u in updates.items() if c != 0}
        return PlainAggregator().aggregate(round_id, kept)


def test_the_aggregator_sees_deltas_and_example_counts_and_may_drop(digits: Dataset) -> None:
    aggregator = _CountingAggregator()
    result = run_federated(FederatedConfig(num_clients=3, rounds=2), aggregator, data=digits)
    assert aggregator.rounds == [1, 2]
    assert aggregator.weights[0] == dict(enumerate(result.client_sizes))
    assert [m.participants for m in result.history[1:]] == [2, 2]


@pytest.mark.parametrize("strategy", ["fedadam", "fedyogi"])
def test_adaptive_strategies_also_learn(digits: Dataset, strategy: str) -> None:
    config = FederatedConfig(
        num_clients=5, rounds=3, strategy=strategy, strategy_params={"eta": 0.01}
    )
    assert run_federated(config, PlainAggregator(), data=digits).final_accuracy > 0.4


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        FederatedConfig(partition="zipf")
    with pytest.raises(ValueError):
        FederatedConfig(strategy="fedsgd")
    with pytest.raises(ValueError):
        FederatedConfig(fraction_fit=0.0)


def test_reports_write_json_and_png(digits: Dataset, tmp_path: Path) -> None:
    config = FederatedConfig(num_clients=3, rounds=1)
    plain = run_federated(config, PlainAggregator(), data=digits)
    dropped = run_federated(config, PlainAggregator(dropout=0.5, seed=1), data=digits)
    runs = {"plain": plain, "dropout": dropped}
    path = write_metrics_json(tmp_path / "out" / "metrics.json", runs, {"note": "test"})
    document = json.loads(path.read_text())
    assert document["note"] == "test"
    assert document["runs"]["plain"]["rounds"][1]["accuracy"] == plain.final_accuracy
    assert document["runs"]["plain"]["rounds"][0]["train_loss"] is None  # NaN -> null
    png = plot_accuracy(tmp_path / "acc.png", runs)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
