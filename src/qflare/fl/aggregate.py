"""The seam where secure aggregation plugs in.

The simulation hands an :class:`Aggregator` every sampled client's flat float32 delta and
integer weight; the aggregator returns only the weighted sum over the clients that survived.
:class:`PlainAggregator` is the explicit non-private baseline; secure implementations live
above this layer (``qflare.sim``) and satisfy the same protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from qflare.fl.models import FlatVector
from qflare.fl.strategy import AggregateResult

__all__ = ["Aggregator", "PlainAggregator", "Update", "weighted_sum"]

Update = tuple[FlatVector, int]


@runtime_checkable
class Aggregator(Protocol):
    """Computes ``sum_i w_i * delta_i`` over the clients that survive a round."""

    def aggregate(self, round_id: int, updates: Mapping[int, Update]) -> AggregateResult:
        """Aggregate one round.

        Args:
            round_id: Round number (1-based, never reused within a run).
            updates: Client id -> (flat float32 delta, integer weight = num_examples).

        Returns:
            The weighted sum and total weight over the survivors.
        """
        ...


def weighted_sum(updates: Mapping[int, Update]) -> AggregateResult:
    """Exact float64 ``sum_i w_i * delta_i`` and ``sum_i w_i`` of all ``updates``.

    Args:
        updates: Client id -> (flat delta, non-negative integer weight).

    Returns:
        The aggregate; an empty mapping gives a zero-length sum and ``num_clients == 0``.

    Raises:
        ValueError: On mismatched lengths or a negative weight.
    """
    if not updates:
        return AggregateResult(np.zeros(0, dtype=np.float64), 0.0, 0)
    sizes = {int(np.asarray(delta).shape[0]) for delta, _ in updates.values()}
    if len(sizes) != 1:
        raise ValueError(f"deltas have different lengths: {sorted(sizes)}")
    total = np.zeros(sizes.pop(), dtype=np.float64)
    total_weight = 0
    for client, (delta, weight) in sorted(updates.items()):
        if weight < 0:
            raise ValueError(f"client {client} has negative weight {weight}")
        total += float(weight) * np.asarray(delta, dtype=np.float64)
        total_weight += int(weight)
    return AggregateResult(total, float(total_weight), len(updates))


class PlainAggregator:
    """Non-private baseline: the server sees every update and sums them exactly in float64.

    Optional simulated dropouts make it comparable with secure runs that lose clients.

    Args:
        dropout: Probability that each sampled client drops before uploading.
        seed: Seed of the dropout draws (combined with the round id).
    """

    def __init__(self, dropout: float = 0.0, seed: int = 0) -> None:
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.dropout = dropout
        self.seed = seed

    def survivors(self, round_id: int, clients: list[int]) -> list[int]:
        """The clients that do not drop out in ``round_id`` (deterministic per seed/round).

        Args:
            round_id: Round number.
            clients: Sampled client ids.

        Returns:
            The surviving ids, in the given order.
        """
        if self.dropout == 0.0:
            return list(clients)
        rng = np.random.default_rng([self.seed, round_id])
        keep = rng.random(len(clients)) >= self.dropout
        return [c for c, k in zip(clients, keep, strict=True) if k]

    def aggregate(self, round_id: int, updates: Mapping[int, Update]) -> AggregateResult:
        """Exact weighted sum over the surviving clients.

        Args:
            round_id: Round number.
            updates: Client id -> (flat float32 delta, integer weight).

        Returns:
            The aggregate over the survivors.
        """
        alive = self.survivors(round_id, sorted(updates))
        return weighted_sum({c: updates[c] for c in alive})
