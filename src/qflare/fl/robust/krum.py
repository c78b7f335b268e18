"""Krum and Multi-Krum.

Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent",
NeurIPS 2017.

With ``f`` assumed Byzantine rows among ``m`` valid ones, each row's score is the sum of its
squared distances to its ``m - f - 2`` nearest other rows. Krum returns the row with the lowest
score; Multi-Krum averages the ``k`` lowest-scoring rows.

The ``m x m`` squared distances come from the Gram matrix ``G = X X^T``:
``||x_i - x_j||^2 = G_ii + G_jj - 2 G_ij``, accumulated in float64 over column blocks (one BLAS
``syrk``-shaped product per block), so memory stays at one float64 block and ``n = 100``,
``d = 10**6`` is one pass of about ``10**10`` multiply-adds.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from qflare.fl.robust._base import (
    Float64Vector,
    Matrix,
    RobustResult,
    Round,
    count_param,
    f64_blocks,
    nothing_accepted,
    prepare,
    weighted_sum,
)


def default_f(m: int) -> int:
    """The largest ``f`` Krum tolerates among ``m`` rows: ``m > 2f + 2``, i.e. ``(m - 3) // 2``."""
    return max((m - 3) // 2, 0)


def gram(updates: Matrix, rows: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
    """``X_rows X_rows^T`` in float64, accumulated over column blocks."""
    g = np.zeros((len(rows), len(rows)), dtype=np.float64)
    for _, b in f64_blocks(updates, rows):
        g += b @ b.T
    return g


def krum_scores(updates: Matrix, rows: npt.NDArray[np.intp], f: int) -> Float64Vector:
    """Each of ``rows``' Krum score: sum of squared distances to its ``m - f - 2`` nearest others.

    ``f`` is capped at :func:`default_f` (the paper's bound ``m > 2f + 2``); with fewer than three
    rows each row's one nearest other counts (two rows tie; one row scores 0).
    """
    m = len(rows)
    if m == 1:
        return np.zeros(1, dtype=np.float64)
    g = gram(updates, rows)
    sq = np.diag(g)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * g, 0.0)
    np.fill_diagonal(dist, np.inf)
    near = max(m - min(f, default_f(m)) - 2, 1)
    nearest = np.partition(dist, near - 1, axis=1)[:, :near]
    return np.asarray(nearest.sum(axis=1), dtype=np.float64)


def _best(r: Round, f: int | None, k: int) -> npt.NDArray[np.intp]:
    """Indices (into all rows) of the ``k`` lowest-scoring valid rows, ties to the lower index."""
    rows = r.index
    scores = krum_scores(r.updates, rows, default_f(len(rows)) if f is None else f)
    return np.sort(rows[np.argsort(scores, kind="stable")[:k]])


class KrumDefence:
    """Krum (Blanchard et al. 2017): the single valid row with the lowest score.

    Args:
        f: Assumed Byzantine rows (default ``(m - 3) // 2`` for ``m`` valid rows; capped there).
    """

    name = "krum"

    def __init__(self, f: float | None = None) -> None:
        self.f = count_param("f", f)

    def aggregate(
        self,
        updates: Matrix,
        weights: Float64Vector,
        reference: Float64Vector | None = None,
    ) -> RobustResult:
        """The chosen row, as float64; only it is accepted."""
        r = prepare(updates, weights)
        if not r.valid.any():
            return nothing_accepted(r.n, r.d)
        (i,) = _best(r, self.f, 1)
        accepted = np.zeros(r.n, dtype=np.bool_)
        accepted[i] = True
        return RobustResult(r.updates[i].astype(np.float64), accepted)


class MultiKrumDefence:
    """Multi-Krum (Blanchard et al. 2017): the weighted mean of the ``m`` lowest-scoring rows.

    The paper averages them uniformly; here they keep their weights, as in FedAvg (equal
    weights give the paper's rule).

    Args:
        f: Assumed Byzantine rows (default ``(n - 3) // 2`` over the valid rows; capped there).
        m: Rows averaged (default ``n - f``, at least 1, at most the valid rows).
    """

    name = "multi-krum"

    def __init__(self, f: float | None = None, m: float | None = None) -> None:
        self.f = count_param("f", f)
        self.m = count_param("m", m)
        if self.m == 0:
            raise ValueError("m must be at least 1")

    def aggregate(
        self,
        updates: Matrix,
        weights: Float64Vector,
        reference: Float64Vector | None = None,
    ) -> RobustResult:
        """The weighted mean of the selected rows."""
        r = prepare(updates, weights)
        valid = len(r.index)
        if valid == 0:
            return nothing_accepted(r.n, r.d)
        f = min(default_f(valid) if self.f is None else self.f, default_f(valid))
        k = min(valid - f if self.m is None else self.m, valid)
        chosen = _best(r, f, k)
        total = float(r.weights[chosen].sum())
        accepted = np.zeros(r.n, dtype=np.bool_)
        accepted[chosen] = True
        if total <= 0:
            return nothing_accepted(r.n, r.d)
        return RobustResult(weighted_sum(r.updates, r.weights / total, chosen), accepted)
