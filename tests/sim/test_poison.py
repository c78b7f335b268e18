"""Poisoning experiments on tiny digits federations: attacks hurt FedAvg, the median resists."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.fl import Dataset, PlainAggregator, load_digits
from qflare.fl.robust import RobustAggregator, make_defence
from qflare.sim.federated import FederatedConfig, run_federated
from qflare.sim.poison import (
    PoisonSetup,
    RunSpec,
    _RootReference,
    _Tracked,
    _worker_run,
    plan_runs,
    run_one,
    run_poison,
)

TINY = PoisonSetup(dataset="digits", num_clients=10, rounds=3, seed=0, malicious_fraction=0.2)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits(seed=0)


def test_sign_flip_wrecks_fedavg_and_the_median_limits_it(digits: Dataset):
    clean = run_one(TINY, RunSpec(None, "fedavg"), digits)
    fedavg = run_one(TINY, RunSpec("sign-flip", "fedavg"), digits)
    median = run_one(TINY, RunSpec("sign-flip", "median"), digits)
    assert clean.final_accuracy > 0.5
    assert fedavg.final_accuracy < clean.final_accuracy - 0.3  # -4x updates of 2 of 10 clients
    assert median.final_accuracy > fedavg.final_accuracy + 0.3
    assert len(median.accuracy) == 4 and median.rejected_malicious == (0, 0, 0)


def test_a_data_transform_that_changes_nothing_changes_no_bit(digits: Dataset):
    seen: list[int] = []

    def identity(cid: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen.append(cid)
        return x, y

    config = FederatedConfig(num_clients=4, rounds=1, partition="dirichlet:0.5")
    plain = run_federated(config, PlainAggregator(), data=digits)
    hooked = run_federated(
        FederatedConfig(
            num_clients=4, rounds=1, partition="dirichlet:0.5", data_transform=identity
        ),
        PlainAggregator(),
        data=digits,
    )
    assert seen == [0, 1, 2, 3]
    assert np.array_equal(plain.final_weights, hooked.final_weights)
    assert hooked.to_dict()["config"]["data_transform"].startswith("<function")  # type: ignore[index]


def test_the_root_reference_follows_the_global_model_exactly(digits: Dataset):
    setup = PoisonSetup(dataset="digits", num_clients=4, rounds=2, root_size=50)
    root = _RootReference(setup, digits)
    calls: list[int] = []

    def reference(round_id: int) -> np.ndarray:
        calls.append(round_id)
        return root(round_id)

    aggregator = _Tracked(RobustAggregator(make_defence("fedavg"), reference=reference), root)
    result = run_federated(setup.federated(), aggregator, data=digits)
    assert calls == [1, 2]
    assert np.array_equal(root.global_flat, result.final_weights)
    assert root(3).shape == result.final_weights.shape


def test_malicious_clients_are_drawn_from_the_seed():
    assert TINY.malicious == PoisonSetup(dataset="digits", num_clients=10).malicious
    assert len(TINY.malicious) == 2
    assert len(PoisonSetup(dataset="digits", num_clients=20, malicious_fraction=0.2).malicious) == 4
    assert PoisonSetup(dataset="digits", malicious_fraction=0.0).malicious == ()
    assert TINY.malicious != PoisonSetup(dataset="digits", num_clients=10, seed=1).malicious


@pytest.mark.parametrize("fraction", [-0.1, 0.5, 0.7])
def test_a_malicious_fraction_outside_0_half_is_refused(fraction: float):
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        PoisonSetup(malicious_fraction=fraction)


def test_the_plan_expands_all_and_refuses_unknown_names():
    specs = plan_runs(["all"], ["median", "fedavg"])
    assert specs[0] == RunSpec(None, "fedavg")
    assert len(specs) == 1 + 7 * 2
    with_clean = plan_runs(["alie"], ["median", "fedavg"], clean_defences=True)
    assert with_clean[:2] == [RunSpec(None, "fedavg"), RunSpec(None, "median")]
    assert len(with_clean) == 2 + 2
    with pytest.raises(ValueError, match="unknown attack 'x'"):
        plan_runs(["x"], ["median"])
    with pytest.raises(ValueError, match="unknown defence 'krumm'"):
        plan_runs(["alie"], ["krumm"])


def test_a_worker_run_matches_an_in_process_run(digits: Dataset):
    """``jobs > 1`` runs :func:`_worker_run` in spawned processes (the process pool itself is
    left to the end-to-end grid: spawning torch workers costs seconds on a shared machine)."""
    setup = PoisonSetup(dataset="digits", num_clients=5, rounds=1)
    spec = RunSpec("backdoor", "median")
    here = run_poison(setup, ["backdoor"], ["median"], jobs=1, data=digits)
    worker = _worker_run((setup, spec, False))
    assert (worker.accuracy, worker.backdoor_asr) == (
        here.runs[0].accuracy,
        here.runs[0].backdoor_asr,
    )
    assert here.runs[0].backdoor_asr is not None and 0.0 <= here.runs[0].backdoor_asr <= 1.0
    assert here.clean.backdoor_asr is not None  # the clean model's natural rate, for comparison
    with pytest.raises(ValueError, match="jobs"):
        run_poison(setup, ["alie"], ["median"], jobs=0)
