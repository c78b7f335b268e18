import json

import numpy as np
import pytest
from typer.testing import CliRunner

from qflare.cli.app import app
from qflare.fl import PlainAggregator, weighted_sum
from qflare.sim.federated import FederatedConfig, run_federated
from qflare.sim.secure import SECURE_PROTOCOLS, SecAggAggregator, attack_observers


@pytest.mark.parametrize("protocol", SECURE_PROTOCOLS)
def test_secure_aggregate_matches_plain_weighted_sum(protocol):
    rng = np.random.default_rng(0)
    updates = {
        u: (rng.normal(0, 0.05, 300).astype(np.float32), int(rng.integers(5, 50))) for u in range(9)
    }
    agg = SecAggAggregator(protocol=protocol, scheme="ed25519", seed=1)
    res = agg.aggregate(1, updates)
    plain = weighted_sum(updates)
    assert res.num_clients == 9 and res.total_weight == plain.total_weight
    assert (
        np.max(np.abs(res.weighted_sum - plain.weighted_sum))
        <= plain.total_weight / agg.quant.scale
    )


def test_secure_aggregate_with_dropouts_covers_exactly_the_survivors():
    rng = np.random.default_rng(1)
    updates = {u: (rng.normal(0, 0.05, 100).astype(np.float32), 10 + u) for u in range(10)}
    agg = SecAggAggregator(dropout=0.3, scheme="ed25519", seed=2)
    res = agg.aggregate(3, updates)
    dropped_before_input = {
        u
        for u, s in agg.last_dropouts.items()
        if s.value in ("R0_REVEAL_SEED", "R1_SHARE_KEYS", "R2_MASKED_INPUT")
    }
    survivors = [u for u in updates if u not in dropped_before_input]
    expected = weighted_sum({u: updates[u] for u in survivors})
    assert res.num_clients == len(survivors)
    assert res.total_weight == expected.total_weight
    assert np.allclose(
        res.weighted_sum, expected.weighted_sum, atol=expected.total_weight / agg.quant.scale
    )


def test_secure_federation_learns_like_plain_on_digits():
    cfg = FederatedConfig(dataset="digits", num_clients=5, rounds=3, seed=0)
    secure = run_federated(cfg, SecAggAggregator(scheme="ed25519", seed=0))
    plain = run_federated(cfg, PlainAggregator())
    assert secure.final_accuracy > 0.6
    assert abs(secure.final_accuracy - plain.final_accuracy) < 0.03


def test_masked_upload_observer_returns_noise_not_the_gradient():
    quantised, masked = attack_observers(cohort_size=4)
    grad = np.random.default_rng(3).normal(0, 0.01, 500).astype(np.float32)
    q = quantised(grad, np.random.default_rng(0))
    m = masked(grad, np.random.default_rng(0))
    assert np.max(np.abs(q - grad)) < 1e-6
    assert abs(np.corrcoef(m, grad)[0, 1]) < 0.2
    assert np.std(m) > 10 * np.std(grad)


def test_simulate_cli_writes_metrics_and_plot(tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "simulate",
            "--dataset",
            "digits",
            "--clients",
            "4",
            "--rounds",
            "2",
            "--partition",
            "iid",
            "--compare-plain",
            "--dropout",
            "0.25",
            "--out",
            str(tmp_path),
        ],
        env={"QFLARE_SIGNATURE_SCHEME": "ed25519", "COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert set(data["runs"]) == {"secagg+", "plain"}
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
    bad = CliRunner().invoke(app, ["simulate", "--protocol", "nope"])
    assert bad.exit_code != 0


def test_parallel_training_gives_the_same_model():
    base = dict(dataset="digits", num_clients=4, rounds=2, seed=3)
    one = run_federated(FederatedConfig(**base), PlainAggregator())
    two = run_federated(FederatedConfig(**base, processes=2), PlainAggregator())
    assert np.allclose(one.final_weights, two.final_weights, atol=1e-5)  # float32 rounding only
