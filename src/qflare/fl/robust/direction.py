"""Rules that weigh whole updates by their norm or direction: FedAvg, cosine, norm clipping, FLTrust.

Each needs two passes over the matrix: one for the norms (and the dots with the reference), one
for the weighted sum of the rows it keeps.
"""

from __future__ import annotations

import numpy as np

from qflare.fl.robust._base import (
    Float64Vector,
    Matrix,
    RobustResult,
    coordinate_median,
    cosines,
    nothing_accepted,
    prepare,
    weighted_mean,
    weighted_sum,
)


class FedAvgDefence:
    """No defence: the weighted mean of every valid row (McMahan et al., AISTATS 2017).

    The baseline the others are judged by. Rows holding NaN or infinity are still refused.
    """

    name = "fedavg"

    def aggregate(
        self,
        updates: Matrix,
        weights: Float64Vector,
        reference: Float64Vector | None = None,
    ) -> RobustResult:
        """The weighted mean of the valid rows."""
        r = prepare(updates, weights)
        return weighted_mean(r.updates, r.weights, r.valid)


class CosineDefence:
    """QFLARE's direction filter: refuse updates pointing away from a reference direction.

    Row ``i`` is accepted when ``cos(x_i, ref) >= threshold``; the accepted rows are averaged
    with their weights. ``ref`` is the ``reference`` passed in (the previous global update, or
    the server's update on a root dataset, as in Cao et al., "FLTrust", NDSS 2021); without one
    (round 1) it is the coordinate-wise median of the valid updates (Yin et al., ICML 2018).

    Conventions: a zero row, or a zero reference, has cosine 0 (so the default threshold 0
    accepts it). If no row is accepted the result is the zero mean with nothing accepted
    (never a silent mean of refused rows), which the aggregator reports as an empty round.

    Args:
        threshold: Minimum cosine in ``[-1, 1]`` (default 0: refuse anything pointing away).
    """

    name = "cosine"

    def __init__(self, threshold: float = 0.0) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [-1, 1], got {threshold}")
        self.threshold = float(threshold)

    def aggregate(
        self,
        updates: Matrix,
        weights: Float64Vector,
        reference: Float64Vector | None = None,
    ) -> RobustResult:
        """Filter by cosine to the reference (or the median), then the weighted mean."""
        r = prepare(updates, weights, reference)
        if not r.valid.any():
            return nothing_accepted(r.n, r.d)
        if r.reference is None or r.dots is None:
            ref = coordinate_median(r.updates, r.index)
            r = prepare(r.updates, r.weights, ref)
        assert r.reference is not None and r.dots is not None
        cos = cosines(r.dots, r.norms, float(np.linalg.norm(r.reference)))
        return weighted_mean(r.updates, r.weights, r.valid & (cos >= self.threshold))


class NormClipDefence:
    """Norm clipping: scale each update to L2 norm at most ``max_norm``, then the weighted mean.

    Sun et al., "Can You Really Backdoor Federated Learning?", 2019. Without ``max_norm`` the
    bound is the median norm of the round's valid updates, so at most half are scaled down.

    Args:
        max_norm: The bound (> 0), or ``None`` for the median norm.
    """

    name = "norm-clip"

    def __init__(self, max_norm: float | None = None) -> None:
        if max_norm is not None and not (np.isfinite(max_norm) and max_norm > 0):
            raise ValueError(f"max_norm must be a finite number > 0, got {max_norm}")
        self.max_norm = None if max_norm is None else float(max_norm)

    def aggregate(
        self,
        updates: Matrix,
        weights: Float64Vector,
        reference: Float64Vector | None = None,
    ) -> RobustResult:
        """Clip every valid row's norm, then take the weighted mean."""
        r = prepare(updates, weights)
        rows = r.index
        total = float(r.weights[rows].sum())
        if total <= 0:
            return nothing_accepted(r.n, r.d)
        norms = r.norms
        bound = self.max_norm if self.max_norm is not None else float(np.median(norms[rows]))
        scale = np.ones(r.n, dtype=np.float64)
        big = r.valid & (norms > bound)
        scale[big] = bound / norms[big]
        mean = weighted_sum(r.updates, r.weights * scale / total, rows)
        return RobustResult(mean, r.valid.copy())


class FLTrustDefence:
    """FLTrust: trust scores from a root-dataset update.

    Cao et al., "FLTrust: Byzantine-robust Federated Learning via Trust Bootstrapping", NDSS 2021.

    The server trains on a small clean root dataset; its update ``g0`` is the ``reference``.
    Each client's trust score is ``ReLU(cos(x_i, g0))``; each update is rescaled to ``||g0||``
    and the result is the trust-weighted mean ``sum_i TS_i * x_i * ||g0|| / ||x_i|| / sum_i TS_i``.
    As in the paper the clients' sample counts are not used (a client could lie about them).
    Rows with zero trust are not accepted; if none has positive trust the result is the zero
    mean with nothing accepted (the paper's update is then zero as well).

    Raises:
        ValueError: Without a reference, or with a zero reference.
    """

    name = "fltrust"

    def aggregate(
        self,
        updates: Matrix,
        weights: Float64Vector,
        reference: Float64Vector | None = None,
    ) -> RobustResult:
        """Trust-weighted mean of the updates rescaled to the reference's norm."""
        if reference is None:
            raise ValueError("fltrust needs a reference: the server's update on its root dataset")
        r = prepare(updates, weights, reference)
        assert r.reference is not None and r.dots is not None
        ref_norm = float(np.linalg.norm(r.reference))
        if ref_norm == 0:
            raise ValueError("fltrust needs a non-zero reference update")
        norms = r.norms
        trust = np.where(r.valid, np.maximum(cosines(r.dots, norms, ref_norm), 0.0), 0.0)
        accepted = trust > 0
        if not accepted.any():
            return nothing_accepted(r.n, r.d)
        coef = np.zeros(r.n, dtype=np.float64)
        coef[accepted] = trust[accepted] * ref_norm / norms[accepted] / trust.sum()
        return RobustResult(weighted_sum(r.updates, coef, np.flatnonzero(accepted)), accepted)
