"""Robust aggregation: rules that see every update and refuse or dampen poisoned ones.

Masking protocols (SecAgg, SecAgg+, CHRONOS) reveal only the sum, so no rule here can run on
their output; these rules are for aggregation that sees individual updates: inside an attested
server enclave, or in the simulator for study. numpy only (no torch), so an enclave can load it.

A :class:`Defence` takes the round's updates as one ``(n, d)`` matrix of float32 deltas, their
integer weights (examples trained on) and an optional reference direction, and returns the
aggregated mean delta and which rows it used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from qflare.fl.strategy import AggregateResult

__all__ = [
    "DEFENCES",
    "Defence",
    "FedAvgDefence",
    "MedianDefence",
    "RobustAggregator",
    "RobustResult",
    "make_defence",
]

Float64Vector = npt.NDArray[np.float64]
Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class RobustResult:
    """One robust aggregation.

    Attributes:
        mean: The aggregated delta (float64, length ``d``): what replaces the weighted mean.
        accepted: Which of the ``n`` rows contributed (all true for rules that use every row).
    """

    mean: Float64Vector
    accepted: npt.NDArray[np.bool_]


class Defence(Protocol):
    """A robust aggregation rule."""

    name: str

    def aggregate(
        self,
        updates: Matrix,
        weights: Float64Vector,
        reference: Float64Vector | None = None,
    ) -> RobustResult:
        """Aggregate ``updates`` (``(n, d)``) with ``weights`` (``(n,)``), given ``reference``.

        ``reference`` is a trusted direction (the previous global update, or the server's own
        update on a root dataset); rules that need none ignore it.
        """
        ...


def _check(updates: Matrix, weights: Float64Vector) -> None:
    if updates.ndim != 2 or updates.shape[0] == 0:
        raise ValueError(f"updates must be a non-empty (n, d) matrix, got shape {updates.shape}")
    if weights.shape != (updates.shape[0],):
        raise ValueError(f"{weights.shape[0]} weights for {updates.shape[0]} updates")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")


class FedAvgDefence:
    """No defence: the weighted mean of every row (the baseline the others are judged by)."""

    name = "fedavg"

    def aggregate(
        self,
        updates: Matrix,
        weights: Float64Vector,
        reference: Float64Vector | None = None,
    ) -> RobustResult:
        """The weighted mean."""
        _check(updates, weights)
        mean = (weights / weights.sum()) @ updates.astype(np.float64)
        return RobustResult(np.asarray(mean, dtype=np.float64), np.ones(len(weights), bool))


class MedianDefence:
    """Coordinate-wise median (Yin et al. 2018); weights are ignored."""

    name = "median"

    def aggregate(
        self,
        updates: Matrix,
        weights: Float64Vector,
        reference: Float64Vector | None = None,
    ) -> RobustResult:
        """The median of each coordinate."""
        _check(updates, weights)
        mean = np.median(updates, axis=0).astype(np.float64)
        return RobustResult(mean, np.ones(len(weights), bool))


_MAKERS: dict[str, Callable[..., Defence]] = {
    "fedavg": FedAvgDefence,
    "median": MedianDefence,
}
DEFENCES: tuple[str, ...] = tuple(_MAKERS)


def make_defence(name: str, **params: float) -> Defence:
    """The defence called ``name`` (one of :data:`DEFENCES`) with its parameters.

    Raises:
        ValueError: For an unknown name or a parameter the defence does not take.
    """
    try:
        maker = _MAKERS[name]
    except KeyError:
        raise ValueError(f"unknown defence {name!r}; choose from {', '.join(DEFENCES)}") from None
    try:
        return maker(**params)
    except TypeError as exc:
        raise ValueError(f"defence {name!r}: {exc}") from None


class RobustAggregator:
    """The simulator's :class:`~qflare.fl.Aggregator` over a :class:`Defence`.

    It sees every update (no masking) and reports the robust mean as a weighted sum over the
    accepted rows, so strategies apply it unchanged. The reference direction is the previous
    round's aggregate unless ``reference`` (round id -> vector or ``None``) supplies one.
    """

    def __init__(
        self,
        defence: Defence,
        reference: Callable[[int], Float64Vector | None] | None = None,
    ) -> None:
        self.defence = defence
        self._reference = reference
        self._previous: Float64Vector | None = None
        self.rejected: dict[int, list[int]] = {}

    def aggregate(
        self, round_id: int, updates: Mapping[int, tuple[npt.NDArray[np.float32], int]]
    ) -> AggregateResult:
        """Aggregate one round robustly; records the rejected client ids per round."""
        if not updates:
            return AggregateResult(np.zeros(0, dtype=np.float64), 0.0, 0)
        ids = sorted(updates)
        matrix = np.stack([np.asarray(updates[c][0], dtype=np.float32) for c in ids])
        weights = np.array([float(updates[c][1]) for c in ids], dtype=np.float64)
        ref = self._reference(round_id) if self._reference is not None else self._previous
        result = self.defence.aggregate(matrix, weights, ref)
        self.rejected[round_id] = [c for c, ok in zip(ids, result.accepted, strict=True) if not ok]
        self._previous = result.mean
        total = float(weights[result.accepted].sum())
        return AggregateResult(result.mean * total, total, int(result.accepted.sum()))
