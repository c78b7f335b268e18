"""Local training behind one small interface: global weights in, ``(delta, example count)`` out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from qflare.participant.base import FloatVector, Trainer

if TYPE_CHECKING:  # torch and the FL layer load only when a node really trains a model
    from qflare.fl import Dataset

__all__ = ["ConstantTrainer", "TorchTrainer", "Trainer", "TrainingConfig", "parse_trainer_spec"]


class ConstantTrainer:
    """A test trainer: a deterministic pseudo-random delta per ``(seed, round)``, fixed weight.

    Tests can recompute :meth:`delta` to predict the server's aggregate exactly.

    Args:
        seed: Seed of the deltas (distinct per node).
        weight: Example count reported every round.
        scale: Deltas are uniform in ``[-scale, scale]``.
    """

    def __init__(self, seed: int, weight: int = 10, scale: float = 0.05) -> None:
        if seed < 0 or weight < 0 or scale <= 0:
            raise ValueError("seed and weight must be >= 0 and scale > 0")
        self.seed, self.weight, self.scale = seed, weight, scale

    def delta(self, dim: int, round_id: int) -> FloatVector:
        """The delta this trainer reports in ``round_id`` for a model of ``dim`` parameters."""
        gen = np.random.default_rng([self.seed, round_id])
        return gen.uniform(-self.scale, self.scale, dim).astype(np.float32)

    def train(self, weights: FloatVector, round_id: int) -> tuple[FloatVector, int]:
        """Ignore the weights except for their size; return the seeded delta."""
        return self.delta(int(weights.size), round_id), self.weight


@dataclass(frozen=True)
class TrainingConfig:
    """Which data a :class:`TorchTrainer` holds and how it trains.

    Attributes:
        dataset: ``mnist`` or ``digits``.
        partition: ``iid``, ``dirichlet:ALPHA`` or ``shards:K``.
        shard: This node's partition index ``i``.
        shards: Number of partitions ``N`` (the whole federation's split).
        seed: Seed of the dataset split, the partition and the local shuffles
            (all nodes of a federation use the same seed, so their shards are disjoint).
        model: Architecture name (``None``: the dataset's default, as on the server).
        epochs: Local epochs per round.
        lr: Local SGD learning rate.
        momentum: Local SGD momentum.
        batch_size: Local batch size.
        min_partition_size: Smallest shard of a Dirichlet split.
    """

    dataset: str = "mnist"
    partition: str = "dirichlet:0.5"
    shard: int = 0
    shards: int = 1
    seed: int = 0
    model: str | None = None
    epochs: int = 1
    lr: float = 0.02
    momentum: float = 0.9
    batch_size: int = 32
    min_partition_size: int = 10

    def __post_init__(self) -> None:
        if not 0 <= self.shard < self.shards:
            raise ValueError(f"shard must lie in [0, {self.shards}), got {self.shard}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and lr > 0")
        from qflare.fl import parse_partition

        parse_partition(self.partition)


class TorchTrainer:
    """Trains on shard ``i`` of ``N`` of a real dataset, like simulated client ``i``.

    Args:
        config: Data and optimiser settings.
        data: A preloaded dataset (loaded from ``config`` if ``None``).
    """

    def __init__(self, config: TrainingConfig, data: Dataset | None = None) -> None:
        from torch import nn

        from qflare.fl import TorchClient, build_model, default_model_name, load_dataset, partition
        from qflare.fl.local import client_loader

        self.config = config
        self.data = data if data is not None else load_dataset(config.dataset, config.seed)
        name = config.model or default_model_name(self.data.input_shape)
        self.model = build_model(name, self.data.input_shape, self.data.num_classes, seed=0)
        self._shapes = [tuple(p.shape) for p in self.model.parameters()]
        parts = partition(
            self.data.y_train.numpy(),
            config.shards,
            config.partition,
            config.seed,
            min_samples=config.min_partition_size,
        )
        loader = client_loader(self.data, parts[config.shard], config.batch_size)
        self.num_examples = len(parts[config.shard])
        self._client = TorchClient(self.model, nn.CrossEntropyLoss(), loader)

    @property
    def dim(self) -> int:
        """Number of model parameters."""
        return sum(int(np.prod(s)) for s in self._shapes)

    def train(self, weights: FloatVector, round_id: int) -> tuple[FloatVector, int]:
        """Train from ``weights`` for the configured epochs; return the delta and shard size.

        Raises:
            ValueError: the global model does not fit this node's architecture.
        """
        from qflare.fl import join_flat, split_flat
        from qflare.fl.local import fit_config

        flat = np.asarray(weights, dtype=np.float32)
        cfg = self.config
        config = fit_config(
            cfg.seed,
            round_id,
            cfg.shard,
            epochs=cfg.epochs,
            lr=cfg.lr,
            momentum=cfg.momentum,
            batch_size=cfg.batch_size,
        )
        result = self._client.fit(split_flat(flat, self._shapes), config)
        return (join_flat(result.weights) - flat).astype(np.float32), result.num_examples


def parse_trainer_spec(spec: str) -> ConstantTrainer:
    """Parse ``constant:SEED`` or ``constant:SEED:WEIGHT`` (test trainers).

    Raises:
        ValueError: anything else.
    """
    kind, _, rest = spec.partition(":")
    fields = rest.split(":") if rest else []
    if kind != "constant" or not 1 <= len(fields) <= 2 or not all(f.isdigit() for f in fields):
        raise ValueError(f"trainer spec must be constant:SEED[:WEIGHT], got {spec!r}")
    return ConstantTrainer(int(fields[0]), *(int(f) for f in fields[1:]))
