"""Local training on several cores: one worker process per core, each with its own federation.

Every worker rebuilds the same seeded federation (data split, model, clients) once, then trains
whichever clients it is handed from the global weights. Each fit is seeded by (seed, round,
client) and starts from the given weights, so results match a single-process run up to float32
rounding (kernels may sum in a different order in another process).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from qflare.fl import FlatVector, Update, join_flat, load_dataset, split_flat, torch_threads
from qflare.sim.federation import FederatedConfig, Federation, build_federation, client_fit_config

_WORKER: dict[str, object] = {}  # per worker process only: its private federation


def _init_worker(config: object) -> None:
    assert isinstance(config, FederatedConfig)
    torch_threads(1).__enter__()  # workers keep one intra-op thread each for their lifetime
    _WORKER["config"] = config
    _WORKER["fed"] = build_federation(config, load_dataset(config.dataset, config.seed))


def _fit(task: tuple[FlatVector, int, int]) -> tuple[int, FlatVector, int, float]:
    global_flat, round_id, cid = task
    fed, config = _WORKER["fed"], _WORKER["config"]
    assert isinstance(fed, Federation) and isinstance(config, FederatedConfig)
    weights = split_flat(global_flat, fed.shapes)
    result = fed.clients[cid].fit(weights, client_fit_config(config, round_id, cid))
    delta = (join_flat(result.weights) - global_flat).astype(np.float32)
    return cid, delta, result.num_examples, float(result.metrics.get("train_loss", 0.0))


class ParallelTrainer:
    """A pool of worker processes that run clients' local training.

    Args:
        config: The federation (each worker rebuilds it from this).
        processes: Number of worker processes.
    """

    def __init__(self, config: FederatedConfig, processes: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(
            processes, mp_context=ctx, initializer=_init_worker, initargs=(config,)
        )

    def fit_all(
        self, global_flat: FlatVector, round_id: int, ids: list[int]
    ) -> tuple[dict[int, Update], float]:
        """Train ``ids`` in parallel; return their (delta, weight) and the mean train loss."""
        results = list(self._pool.map(_fit, [(global_flat, round_id, cid) for cid in ids]))
        updates = {cid: (delta, n) for cid, delta, n, _ in results}
        examples = sum(n for _, _, n, _ in results)
        loss = sum(loss * n for _, _, n, loss in results) / examples if examples else float("nan")
        return updates, loss

    def close(self) -> None:
        """Stop the workers."""
        self._pool.shutdown(cancel_futures=True)
