"""Coordinate-wise rules: median and trimmed mean.

Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML 2018.

Both ignore the weights (a weighted order statistic would let one client claiming many examples
move it) and use only the valid rows. Each column block is transposed so each coordinate's values
are contiguous, and ``np.partition`` (linear-time selection) replaces a full sort.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from qflare.fl.robust._base import (
    Float64Vector,
    Matrix,
    RobustResult,
    coordinate_median,
    count_param,
    f32_columns,
    nothing_accepted,
    prepare,
)


class MedianDefence:
    """Coordinate-wise median (Yin et al. 2018) of the valid rows; weights are ignored."""

    name = "median"

    def aggregate(
        self,
        updates: Matrix,
        weights: Float64Vector,
        reference: Float64Vector | None = None,
    ) -> RobustResult:
        """The median of each coordinate."""
        r = prepare(updates, weights)
        if not r.valid.any():
            return nothing_accepted(r.n, r.d)
        return RobustResult(coordinate_median(r.updates, r.index), r.valid.copy())


class TrimmedMeanDefence:
    """Coordinate-wise trimmed mean (Yin et al. 2018); weights are ignored.

    For each coordinate the ``k`` largest and ``k`` smallest of the ``m`` valid values are
    dropped and the rest averaged, with ``k = f`` if ``f`` is given, else ``floor(beta * m)``;
    ``k`` is capped at ``(m - 1) // 2`` so that at least one value remains.

    Args:
        beta: Fraction trimmed at each end, in ``[0, 0.5)`` (default 0.1).
        f: Rows trimmed at each end (overrides ``beta``).
    """

    name = "trimmed-mean"

    def __init__(self, beta: float = 0.1, f: float | None = None) -> None:
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"beta must lie in [0, 0.5), got {beta}")
        self.beta = float(beta)
        self.f = count_param("f", f)

    def trim(self, m: int) -> int:
        """Values dropped at each end of ``m``."""
        k = self.f if self.f is not None else int(np.floor(self.beta * m))
        return min(k, (m - 1) // 2)

    def aggregate(
        self,
        updates: Matrix,
        weights: Float64Vector,
        reference: Float64Vector | None = None,
    ) -> RobustResult:
        """The trimmed mean of each coordinate."""
        r = prepare(updates, weights)
        rows = r.index
        if len(rows) == 0:
            return nothing_accepted(r.n, r.d)
        return RobustResult(trimmed_mean(r.updates, rows, self.trim(len(rows))), r.valid.copy())


def trimmed_mean(updates: Matrix, rows: npt.NDArray[np.intp], k: int) -> Float64Vector:
    """Mean of each coordinate over ``rows`` without its ``k`` smallest and ``k`` largest values.

    Two single-index partitions per block (one multi-index partition is several times slower):
    the first moves the ``k`` smallest to the front, the second, on the rest, the ``k`` largest to
    the back. The kept values are summed directly (no total-minus-tails, which would cancel
    catastrophically next to a huge outlier).
    """
    m = len(rows)
    out = np.empty(updates.shape[1], dtype=np.float64)
    for cols, b in f32_columns(updates, rows):
        if k:
            b.partition(k, axis=1)
            rest = b[:, k:]
            rest.partition(m - 2 * k - 1, axis=1)
        out[cols] = b[:, k : m - k].sum(axis=1, dtype=np.float64) / (m - 2 * k)
    return out
