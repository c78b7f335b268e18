"""Federated-learning simulation: real models, real offline data, a pluggable aggregator.

Each round the server samples clients; every sampled client trains locally from the global
weights and hands its flat delta and example count to the :class:`~qflare.fl.Aggregator`
(plain, or secure aggregation). The aggregator returns only the weighted sum over the
clients that survived; the strategy turns it into the next global model, which is then
evaluated on the held-out test split.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from torch import nn

from qflare.fl import (
    Aggregator,
    Dataset,
    FlatVector,
    Strategy,
    Update,
    build_strategy,
    evaluate_batches,
    get_flat,
    join_flat,
    load_dataset,
    sample_clients,
    set_flat,
    split_flat,
    torch_threads,
)
from qflare.sim.federation import (
    ClientDataTransform,
    FederatedConfig,
    Federation,
    build_federation,
    client_fit_config,
)
from qflare.sim.parallel import ParallelTrainer

__all__ = [
    "ClientDataTransform",
    "FederatedConfig",
    "Progress",
    "RoundMetrics",
    "SimulationResult",
    "run_federated",
]


@dataclass(frozen=True)
class RoundMetrics:
    """What one round produced.

    Attributes:
        round_id: Round number (0 = the initial model, before any training).
        accuracy: Test accuracy of the new global model.
        loss: Test cross-entropy of the new global model.
        sampled: Clients asked to train.
        participants: Clients the aggregate covers (sampled minus dropouts).
        train_loss: Example-weighted mean local training loss of the sampled clients.
        fit_seconds: Time spent in local training (all clients, sequential).
        aggregate_seconds: Time spent in the aggregator.
        seconds: Whole round, evaluation included.
    """

    round_id: int
    accuracy: float
    loss: float
    sampled: int = 0
    participants: int = 0
    train_loss: float = float("nan")
    fit_seconds: float = 0.0
    aggregate_seconds: float = 0.0
    seconds: float = 0.0


Progress = Callable[[int, RoundMetrics], None]


@dataclass(frozen=True)
class SimulationResult:
    """Outcome of :func:`run_federated`.

    Attributes:
        config: The configuration that ran.
        history: Round 0 (initial model) followed by one entry per round.
        final_weights: The final global model as a flat float32 vector.
        client_sizes: Training examples per client.
        seconds: Wall-clock time of the whole run.
    """

    config: FederatedConfig
    history: tuple[RoundMetrics, ...]
    final_weights: FlatVector
    client_sizes: tuple[int, ...]
    seconds: float

    @property
    def final_accuracy(self) -> float:
        """Test accuracy after the last round."""
        return self.history[-1].accuracy

    @property
    def num_parameters(self) -> int:
        """Length of the model's flat vector."""
        return int(self.final_weights.shape[0])

    def to_dict(self) -> dict[str, object]:
        """JSON-ready view (the weights are summarised by their count)."""
        config = asdict(self.config)
        config["strategy_params"] = dict(self.config.strategy_params)
        transform = self.config.data_transform
        config["data_transform"] = None if transform is None else repr(transform)
        return {
            "config": config,
            "num_parameters": self.num_parameters,
            "client_sizes": list(self.client_sizes),
            "final_accuracy": self.final_accuracy,
            "seconds": self.seconds,
            "rounds": [asdict(r) for r in self.history],
        }


def _local_updates(
    fed: Federation,
    config: FederatedConfig,
    global_flat: FlatVector,
    round_id: int,
    ids: list[int],
) -> tuple[dict[int, Update], float]:
    """Train every sampled client; return their (delta, weight) and the mean train loss."""
    updates: dict[int, Update] = {}
    loss_sum, examples = 0.0, 0
    weights = split_flat(global_flat, fed.shapes)
    for cid in ids:
        result = fed.clients[cid].fit(weights, client_fit_config(config, round_id, cid))
        delta = (join_flat(result.weights) - global_flat).astype(np.float32)
        updates[cid] = (delta, result.num_examples)
        loss_sum += float(result.metrics.get("train_loss", 0.0)) * result.num_examples
        examples += result.num_examples
    return updates, (loss_sum / examples if examples else float("nan"))


def _evaluate(fed: Federation, global_flat: FlatVector) -> tuple[float, float]:
    """Test loss and accuracy of ``global_flat`` on the held-out split."""
    set_flat(fed.model, global_flat)
    x, y, step = fed.data.x_test, fed.data.y_test, 1024
    batches = [(x[i : i + step], y[i : i + step]) for i in range(0, len(y), step)]
    loss, accuracy, _ = evaluate_batches(fed.model, nn.CrossEntropyLoss(), batches)
    return loss, accuracy


def _run_round(
    fed: Federation,
    config: FederatedConfig,
    strategy: Strategy,
    aggregator: Aggregator,
    global_flat: FlatVector,
    round_id: int,
    ids: list[int],
    trainer: ParallelTrainer | None = None,
) -> tuple[FlatVector, RoundMetrics]:
    """Local training, aggregation, server step and evaluation for one round."""
    round_start = time.perf_counter()
    if trainer is not None:
        updates, train_loss = trainer.fit_all(global_flat, round_id, ids)
    else:
        updates, train_loss = _local_updates(fed, config, global_flat, round_id, ids)
    fit_done = time.perf_counter()
    aggregate = aggregator.aggregate(round_id, updates)
    aggregate_done = time.perf_counter()
    new_global = strategy.apply(global_flat, aggregate)
    loss, accuracy = _evaluate(fed, new_global)
    metrics = RoundMetrics(
        round_id=round_id,
        accuracy=accuracy,
        loss=loss,
        sampled=len(ids),
        participants=aggregate.num_clients,
        train_loss=train_loss,
        fit_seconds=fit_done - round_start,
        aggregate_seconds=aggregate_done - fit_done,
        seconds=time.perf_counter() - round_start,
    )
    return new_global, metrics


def run_federated(
    config: FederatedConfig,
    aggregator: Aggregator,
    *,
    progress: Progress | None = None,
    data: Dataset | None = None,
) -> SimulationResult:
    """Run a seeded federated simulation.

    Args:
        config: The federation to simulate.
        aggregator: Computes the weighted sum of deltas (plain or secure); may drop clients.
        progress: Called as ``progress(round_id, metrics)`` after every round.
        data: A preloaded dataset (must match ``config.dataset``); loaded if ``None``.

    Returns:
        Per-round metrics and the final model.
    """
    start = time.perf_counter()
    with torch_threads(config.threads):
        dataset = data if data is not None else load_dataset(config.dataset, config.seed)
        fed = build_federation(config, dataset)
        global_flat = get_flat(fed.model)
        strategy = build_strategy(config.strategy, config.strategy_params)
        strategy.initialize(global_flat)
        sampler = np.random.default_rng([config.seed, 0x5A])
        loss, accuracy = _evaluate(fed, global_flat)
        history = [RoundMetrics(0, accuracy, loss)]
        trainer = ParallelTrainer(config, config.processes) if config.processes > 1 else None
        try:
            for round_id in range(1, config.rounds + 1):
                ids = sample_clients(
                    config.num_clients,
                    config.fraction_fit,
                    sampler,
                    min_clients=config.min_fit_clients,
                )
                global_flat, metrics = _run_round(
                    fed, config, strategy, aggregator, global_flat, round_id, ids, trainer
                )
                history.append(metrics)
                if progress is not None:
                    progress(round_id, metrics)
        finally:
            if trainer is not None:
                trainer.close()
    elapsed = time.perf_counter() - start
    return SimulationResult(config, tuple(history), global_flat, fed.sizes, elapsed)
