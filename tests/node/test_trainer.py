"""Trainers: the deterministic test trainer and real local training on a digits shard."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.fl import (
    PlainAggregator,
    build_model,
    default_model_name,
    get_flat,
    load_dataset,
    partition,
)
from qflare.node import ConstantTrainer, TorchTrainer, TrainingConfig
from qflare.node.trainer import parse_trainer_spec
from qflare.sim.federated import FederatedConfig, run_federated


def test_constant_trainer_is_deterministic_per_seed_and_round():
    a, b = ConstantTrainer(1, weight=4), ConstantTrainer(1, weight=4)
    w = np.zeros(50, dtype=np.float32)
    d1, n1 = a.train(w, 3)
    d2, _ = b.train(w + 5, 3)
    assert n1 == 4 and d1.dtype == np.float32 and d1.shape == (50,)
    assert np.array_equal(d1, d2)
    assert not np.array_equal(d1, a.train(w, 4)[0])
    assert not np.array_equal(d1, ConstantTrainer(2).train(w, 3)[0])
    assert np.abs(d1).max() <= a.scale


@pytest.mark.parametrize(
    ("spec", "seed", "weight"), [("constant:7", 7, 10), ("constant:7:3", 7, 3)]
)
def test_trainer_spec(spec, seed, weight):
    trainer = parse_trainer_spec(spec)
    assert (trainer.seed, trainer.weight) == (seed, weight)


@pytest.mark.parametrize(
    "spec", ["constant", "constant:x", "torch:1", "constant:1:2:3", "constant:-1"]
)
def test_bad_trainer_spec(spec):
    with pytest.raises(ValueError):
        parse_trainer_spec(spec)


def test_training_config_validation():
    with pytest.raises(ValueError):
        TrainingConfig(shard=3, shards=3)
    with pytest.raises(ValueError):
        TrainingConfig(partition="bogus")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", 0)


def test_torch_trainer_trains_its_own_shard_from_the_given_weights(digits):
    cfg = TrainingConfig(dataset="digits", partition="iid", shard=1, shards=4, epochs=1)
    trainer = TorchTrainer(cfg, data=digits)
    parts = partition(digits.y_train.numpy(), 4, "iid", 0)
    net = build_model(default_model_name(digits.input_shape), digits.input_shape, 10, seed=3)
    weights = get_flat(net)

    delta, examples = trainer.train(weights, round_id=1)
    assert examples == len(parts[1]) == trainer.num_examples
    assert delta.dtype == np.float32 and delta.shape == weights.shape == (trainer.dim,)
    assert 0 < np.abs(delta).max() < 1.0
    again, _ = TorchTrainer(cfg, data=digits).train(weights, round_id=1)
    np.testing.assert_allclose(delta, again, atol=1e-6)  # reproducible from (seed, round, shard)
    with pytest.raises(ValueError):
        trainer.train(weights[:-1], round_id=1)


def test_nodes_on_all_shards_reproduce_the_simulations_first_round(digits):
    sim = FederatedConfig(
        dataset="digits",
        num_clients=3,
        rounds=1,
        partition="iid",
        lr=0.05,
        momentum=0.9,
        batch_size=16,
        seed=4,
    )
    result = run_federated(sim, PlainAggregator(), data=digits)
    net = build_model(default_model_name(digits.input_shape), digits.input_shape, 10, seed=4)
    initial = get_flat(net)

    total, weight = np.zeros(initial.size), 0
    for shard in range(3):
        cfg = TrainingConfig(
            dataset="digits",
            partition="iid",
            shard=shard,
            shards=3,
            seed=4,
            lr=0.05,
            momentum=0.9,
            batch_size=16,
        )
        delta, examples = TorchTrainer(cfg, data=digits).train(initial, round_id=1)
        total += examples * delta.astype(np.float64)
        weight += examples
    np.testing.assert_allclose(initial + total / weight, result.final_weights, atol=1e-5)
