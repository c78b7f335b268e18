"""Centred clipping.

Karimireddy, He and Jaggi, "Learning from History for Byzantine Robust Optimization", ICML 2021.

Starting from ``v_0`` (the reference, i.e. the previous aggregate/momentum, if given, else the
coordinate-wise median of the valid rows), each iteration moves ``v`` by the weighted mean of the
updates' offsets from it, each offset clipped to norm ``tau``::

    v <- v + sum_i w_i * clip(x_i - v, tau) / sum_i w_i,   clip(z, tau) = z * min(1, tau / ||z||)

An outlier thus moves ``v`` by at most ``tau * w_i / sum w``, however far it lies.
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
    f64_blocks,
    nothing_accepted,
    prepare,
    weighted_sum,
)


def distances(updates: Matrix, rows: npt.NDArray[np.intp], v: Float64Vector) -> Float64Vector:
    """``||x_i - v||`` for ``rows``, in float64 over column blocks (no cancellation)."""
    sq = np.zeros(len(rows), dtype=np.float64)
    for cols, b in f64_blocks(updates, rows):
        b -= v[cols]
        sq += np.einsum("ij,ij->i", b, b)
    return np.sqrt(sq)


class CentredClipDefence:
    """Centred clipping (Karimireddy et al. 2021), ``iterations`` steps of radius ``tau``.

    Args:
        tau: Clipping radius (> 0). Default: the median distance of the valid rows from the
            starting point, fixed for the round (scale-free; at most half the rows are clipped
            in the first step).
        iterations: Clipping steps ``L`` (default 3, at least 1).
    """

    name = "centred-clip"

    def __init__(self, tau: float | None = None, iterations: float = 3) -> None:
        if tau is not None and not (np.isfinite(tau) and tau > 0):
            raise ValueError(f"tau must be a finite number > 0, got {tau}")
        steps = count_param("iterations", iterations)
        if not steps:
            raise ValueError("iterations must be at least 1")
        self.tau = None if tau is None else float(tau)
        self.iterations = steps

    def aggregate(
        self,
        updates: Matrix,
        weights: Float64Vector,
        reference: Float64Vector | None = None,
    ) -> RobustResult:
        """Iterate the clipped re-centring from the reference (or the median)."""
        r = prepare(updates, weights, reference)
        rows = r.index
        total = float(r.weights[rows].sum())
        if total <= 0:
            return nothing_accepted(r.n, r.d)
        w = r.weights[rows] / total
        v = r.reference.copy() if r.reference is not None else coordinate_median(r.updates, rows)
        tau = self.tau
        for _ in range(self.iterations):
            dist = distances(r.updates, rows, v)
            if tau is None:
                tau = float(np.median(dist))
            scale = np.ones_like(dist)
            far = dist > tau
            scale[far] = tau / dist[far]
            coef = np.zeros(r.n, dtype=np.float64)
            coef[rows] = w * scale
            v = v * (1.0 - float(coef.sum())) + weighted_sum(r.updates, coef, rows)
        return RobustResult(v, r.valid.copy())
