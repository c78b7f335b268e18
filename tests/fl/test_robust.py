"""Robust aggregation rules against plain reference implementations, hand cases and attacks.

The ``ref_*`` functions are written independently of ``qflare.fl.robust``: Python loops over
rows and coordinates, ``sorted`` and ``statistics.median`` instead of partitions, distances
computed directly instead of through a Gram matrix, all on float64 lists.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
from collections.abc import Callable
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.fl import robust
from qflare.fl.robust import (
    DEFENCES,
    Defence,
    RobustAggregator,
    RobustResult,
    _base,
    make_defence,
)
from qflare.fl.strategy import AggregateResult, FedAdam, FedAvg

Rows = list[list[float]]

# ----------------------------------------------------------------------------- references


def _finite_rows(x: np.ndarray) -> list[int]:
    return [i for i in range(len(x)) if all(math.isfinite(float(v)) for v in x[i])]


def _rows(x: np.ndarray, idx: list[int]) -> Rows:
    return [[float(v) for v in x[i]] for i in idx]


def _wmean(rows: Rows, w: list[float]) -> list[float]:
    total = sum(w)
    return [
        sum(wi * r[j] for wi, r in zip(w, rows, strict=True)) / total for j in range(len(rows[0]))
    ]


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(a * a for a in v))


def _cos(a: list[float], b: list[float]) -> float:
    na, nb = _norm(a), _norm(b)
    return 0.0 if na == 0 or nb == 0 else sum(p * q for p, q in zip(a, b, strict=True)) / (na * nb)


def _median_vec(rows: Rows) -> list[float]:
    return [statistics.median(r[j] for r in rows) for j in range(len(rows[0]))]


def _result(
    mean: list[float] | None, d: int, accepted: list[bool]
) -> tuple[np.ndarray, list[bool]]:
    return (np.zeros(d) if mean is None else np.array(mean)), accepted


def ref_fedavg(x, w, ref, **_):
    ok = _finite_rows(x)
    return _result(
        _wmean(_rows(x, ok), [w[i] for i in ok]), x.shape[1], [i in ok for i in range(len(x))]
    )


def ref_cosine(x, w, ref, threshold=0.0):
    ok = _finite_rows(x)
    rows = _rows(x, ok)
    direction = list(map(float, ref)) if ref is not None else _median_vec(rows)
    keep = [i for i, r in zip(ok, rows, strict=True) if _cos(r, direction) >= threshold]
    if not keep:
        return _result(None, x.shape[1], [False] * len(x))
    return _result(
        _wmean(_rows(x, keep), [w[i] for i in keep]), x.shape[1], [i in keep for i in range(len(x))]
    )


def ref_norm_clip(x, w, ref, max_norm=None):
    ok = _finite_rows(x)
    rows = _rows(x, ok)
    norms = [_norm(r) for r in rows]
    bound = statistics.median(norms) if max_norm is None else max_norm
    clipped = [
        [v * min(1.0, bound / n) if n > 0 else v for v in r]
        for r, n in zip(rows, norms, strict=True)
    ]
    return _result(
        _wmean(clipped, [w[i] for i in ok]), x.shape[1], [i in ok for i in range(len(x))]
    )


def ref_median(x, w, ref, **_):
    ok = _finite_rows(x)
    return _result(_median_vec(_rows(x, ok)), x.shape[1], [i in ok for i in range(len(x))])


def ref_trimmed_mean(x, w, ref, beta=0.1, f=None):
    ok = _finite_rows(x)
    rows = _rows(x, ok)
    m = len(rows)
    k = min(f if f is not None else math.floor(beta * m), (m - 1) // 2)
    mean = []
    for j in range(x.shape[1]):
        column = sorted(r[j] for r in rows)
        kept = column[k : m - k]
        mean.append(sum(kept) / len(kept))
    return _result(mean, x.shape[1], [i in ok for i in range(len(x))])


def _krum_order(rows: Rows, f: int | None) -> list[int]:
    m = len(rows)
    cap = max((m - 3) // 2, 0)
    f = cap if f is None else min(f, cap)
    near = max(m - f - 2, 1)
    scores = []
    for i in range(m):
        dists = sorted(
            sum((a - b) ** 2 for a, b in zip(rows[i], rows[j], strict=True))
            for j in range(m)
            if j != i
        )
        scores.append((sum(dists[:near]), i))
    return [i for _, i in sorted(scores)]


def ref_krum(x, w, ref, f=None):
    ok = _finite_rows(x)
    best = ok[_krum_order(_rows(x, ok), f)[0]]
    return _result(list(map(float, x[best])), x.shape[1], [i == best for i in range(len(x))])


def ref_multi_krum(x, w, ref, f=None, m=None):
    ok = _finite_rows(x)
    cap = max((len(ok) - 3) // 2, 0)
    ff = cap if f is None else min(f, cap)
    k = min(len(ok) - ff if m is None else m, len(ok))
    chosen = [ok[i] for i in _krum_order(_rows(x, ok), ff)[:k]]
    mean = _wmean(_rows(x, chosen), [w[i] for i in chosen])
    return _result(mean, x.shape[1], [i in chosen for i in range(len(x))])


def ref_centred_clip(x, w, ref, tau=None, iterations=3):
    ok = _finite_rows(x)
    rows = _rows(x, ok)
    ws = [w[i] for i in ok]
    v = list(map(float, ref)) if ref is not None else _median_vec(rows)
    for _ in range(iterations):
        offsets = [[a - b for a, b in zip(r, v, strict=True)] for r in rows]
        dists = [_norm(o) for o in offsets]
        if tau is None:
            tau = statistics.median(dists)
        step = [0.0] * len(v)
        for wi, o, dist in zip(ws, offsets, dists, strict=True):
            s = 1.0 if dist <= tau else tau / dist
            for j in range(len(v)):
                step[j] += wi * s * o[j] / sum(ws)
        v = [a + b for a, b in zip(v, step, strict=True)]
    return _result(v, x.shape[1], [i in ok for i in range(len(x))])


def ref_fltrust(x, w, ref, **_):
    ok = _finite_rows(x)
    g0 = list(map(float, ref))
    n0 = _norm(g0)
    trust = {i: max(0.0, _cos(list(map(float, x[i])), g0)) for i in ok}
    total = sum(trust.values())
    if total == 0:
        return _result(None, x.shape[1], [False] * len(x))
    mean = [0.0] * x.shape[1]
    for i, ts in trust.items():
        row = list(map(float, x[i]))
        nrm = _norm(row)
        for j in range(len(mean)):
            mean[j] += ts * row[j] * n0 / nrm / total
    return _result(mean, x.shape[1], [trust.get(i, 0.0) > 0 for i in range(len(x))])


REFERENCES: dict[str, tuple[Callable[..., tuple[np.ndarray, list[bool]]], dict[str, float]]] = {
    "fedavg": (ref_fedavg, {}),
    "cosine": (ref_cosine, {"threshold": 0.1}),
    "norm-clip": (ref_norm_clip, {}),
    "median": (ref_median, {}),
    "trimmed-mean": (ref_trimmed_mean, {"beta": 0.2}),
    "krum": (ref_krum, {}),
    "multi-krum": (ref_multi_krum, {"f": 1}),
    "centred-clip": (ref_centred_clip, {"iterations": 2}),
    "fltrust": (ref_fltrust, {}),
}

# ----------------------------------------------------------------------------- cross-checks


@st.composite
def rounds(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """A seeded random round (continuous values: no ties), some rows poisoned with NaN/inf."""
    n = draw(st.integers(1, 9))
    d = draw(st.integers(1, 7))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = (rng.standard_normal((n, d)) * rng.uniform(0.1, 5.0, (n, 1))).astype(np.float32)
    bad = draw(st.lists(st.sampled_from([np.nan, np.inf, -np.inf]), max_size=2))
    if len(bad) < n:
        for i, value in enumerate(bad):
            x[i, rng.integers(d)] = value
    weights = rng.integers(1, 6, n).astype(np.float64)
    reference = rng.standard_normal(d) if draw(st.booleans()) else None
    return x, weights, reference, draw(st.integers(1, 4))


@pytest.mark.parametrize("name", DEFENCES)
@settings(max_examples=30, deadline=None)
@given(case=rounds())
def test_each_rule_matches_its_plain_reference(name: str, case) -> None:
    x, weights, reference, block = case
    ref_fn, params = REFERENCES[name]
    if name == "fltrust" and reference is None:
        reference = np.ones(x.shape[1])
    with patch.object(_base, "BLOCK", block):  # several column blocks even at tiny d
        got = make_defence(name, **params).aggregate(x, weights, reference)
    want_mean, want_accepted = ref_fn(x, weights, reference, **params)
    assert got.mean.dtype == np.float64 and got.mean.shape == (x.shape[1],)
    assert got.accepted.dtype == np.bool_ and got.accepted.tolist() == want_accepted
    np.testing.assert_allclose(got.mean, want_mean, rtol=1e-6, atol=1e-9)


def test_every_rule_is_deterministic_and_leaves_its_input_alone() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 50)).astype(np.float32)
    before = x.copy()
    for name in DEFENCES:
        first = make_defence(name).aggregate(x, np.ones(7), np.ones(50))
        second = make_defence(name).aggregate(x, np.ones(7), np.ones(50))
        assert np.array_equal(first.mean, second.mean), name
        assert np.array_equal(x, before), name


# ----------------------------------------------------------------------------- hand cases


def _agg(name: str, rows: Rows, ref: list[float] | None = None, **params: float) -> RobustResult:
    x = np.array(rows, dtype=np.float32)
    r = None if ref is None else np.array(ref, dtype=np.float64)
    return make_defence(name, **params).aggregate(x, np.ones(len(rows)), r)


def test_krum_picks_a_member_of_the_honest_cluster() -> None:
    honest = [[1.0, 1.0], [1.1, 0.9], [0.9, 1.1], [1.0, 1.2], [1.05, 0.95]]
    result = _agg("krum", [*honest, [100.0, -100.0], [101.0, -99.0]], f=2)
    (chosen,) = np.flatnonzero(result.accepted)
    assert chosen < 5 and result.mean.tolist() == pytest.approx(honest[chosen])
    # the honest row nearest the others: (1.05, 0.95) and (1, 1) are central; (1, 1) scores lowest
    assert chosen == 0


def test_multi_krum_averages_the_honest_rows_only() -> None:
    rows = [[1.0, 0.0], [1.0, 0.2], [1.2, 0.0], [0.8, 0.0], [50.0, 50.0]]
    result = _agg("multi-krum", rows, f=1, m=4)
    assert result.accepted.tolist() == [True, True, True, True, False]
    assert result.mean.tolist() == pytest.approx([1.0, 0.05])


def test_trimmed_mean_of_known_columns() -> None:
    rows = [[1.0, -50.0], [2.0, 0.0], [3.0, 1.0], [4.0, 2.0], [100.0, 3.0]]
    assert _agg("trimmed-mean", rows, beta=0.2).mean.tolist() == [3.0, 1.0]
    assert _agg("trimmed-mean", rows, f=1).mean.tolist() == [3.0, 1.0]
    assert _agg("trimmed-mean", rows, f=2).mean.tolist() == [3.0, 1.0]  # the median
    assert _agg("trimmed-mean", rows, beta=0.0).mean.tolist() == [22.0, -8.8]
    assert _agg("trimmed-mean", rows, f=7).mean.tolist() == [3.0, 1.0]  # capped at (m-1)//2


def test_median_of_an_even_count_is_the_mean_of_the_middle_two() -> None:
    assert _agg("median", [[1.0], [5.0], [2.0], [100.0]]).mean.tolist() == [3.5]


def test_cosine_rejects_a_sign_flipped_update() -> None:
    rows = [[1.0, 2.0], [1.5, 1.5], [-10.0, -20.0]]
    result = _agg("cosine", rows, ref=[1.0, 1.0])
    assert result.accepted.tolist() == [True, True, False]
    assert result.mean.tolist() == pytest.approx([1.25, 1.75])
    # round 1, no reference: the median (1, 1.5) plays the reference
    assert _agg("cosine", rows).accepted.tolist() == [True, True, False]


def test_cosine_with_everything_refused_accepts_nothing_and_returns_zero() -> None:
    result = _agg("cosine", [[-1.0, 0.0], [0.0, -1.0]], ref=[1.0, 1.0])
    assert result.accepted.tolist() == [False, False] and result.mean.tolist() == [0.0, 0.0]


def test_fltrust_gives_zero_trust_to_a_flipped_update() -> None:
    rows = [[2.0, 0.0], [0.0, 3.0], [-5.0, -5.0]]
    result = _agg("fltrust", rows, ref=[1.0, 1.0])
    assert result.accepted.tolist() == [True, True, False]
    # both honest rows have trust cos 45 deg and are rescaled to ||ref|| = sqrt(2)
    assert result.mean.tolist() == pytest.approx([math.sqrt(2) / 2, math.sqrt(2) / 2])


def test_fltrust_without_a_reference_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="fltrust needs a reference"):
        _agg("fltrust", [[1.0]])
    with pytest.raises(ValueError, match="non-zero reference"):
        _agg("fltrust", [[1.0]], ref=[0.0])


def test_norm_clip_bounds_a_scaled_updates_influence() -> None:
    honest = [[1.0, 0.0]] * 3
    result = _agg("norm-clip", [*honest, [0.0, 1000.0]], max_norm=1.0)
    assert result.mean.tolist() == pytest.approx([0.75, 0.25])
    # default bound: the median norm (1), same result
    assert _agg("norm-clip", [*honest, [0.0, 1000.0]]).mean.tolist() == pytest.approx([0.75, 0.25])


def test_centred_clip_moves_at_most_tau_per_step_towards_an_outlier() -> None:
    rows = [[0.0, 0.0], [0.0, 0.0], [1e6, 0.0]]
    one = _agg("centred-clip", rows, ref=[0.0, 0.0], tau=0.3, iterations=1)
    assert one.mean.tolist() == pytest.approx([0.1, 0.0])  # the outlier's offset clipped to 0.3
    # step 2 from v = 0.1: the honest offsets -0.1 are within tau, the outlier's is clipped again
    two = _agg("centred-clip", rows, ref=[0.0, 0.0], tau=0.3, iterations=2)
    assert two.mean.tolist() == pytest.approx([0.1 + (0.3 - 0.2) / 3, 0.0])


def test_non_finite_rows_are_refused_not_fatal() -> None:
    rows = [[1.0, 2.0], [float("nan"), 0.0], [3.0, float("inf")], [3.0, 4.0]]
    for name in DEFENCES:
        result = _agg(name, rows, ref=[1.0, 1.0])
        assert not result.accepted[1] and not result.accepted[2], name
        assert np.all(np.isfinite(result.mean)), name
    nothing = _agg("median", [[float("nan")], [float("inf")]])
    assert nothing.accepted.tolist() == [False, False] and nothing.mean.tolist() == [0.0]


# ----------------------------------------------------------------------------- attacks

D = 200
HONEST = 20


def _attacked(kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    direction = rng.standard_normal(D)
    honest = direction + 0.3 * rng.standard_normal((HONEST, D))
    if kind == "flip":
        bad = -10.0 * (direction + 0.3 * rng.standard_normal((4, D)))
    else:  # boost: the honest direction scaled a hundredfold (model replacement)
        bad = 100.0 * (direction + 0.3 * rng.standard_normal((4, D)))
    x = np.vstack([honest, bad]).astype(np.float32)
    server = direction + 0.3 * rng.standard_normal(D)  # the root-dataset / previous update
    return x, honest.mean(axis=0), server


ROBUST = {
    "cosine": {},
    "norm-clip": {},
    "median": {},
    "trimmed-mean": {"f": 4},
    "krum": {},
    "multi-krum": {},
    "centred-clip": {},
    "fltrust": {},
}
# The cosine filter judges direction only: a boosted update in the honest direction passes it
# (QFLARE pairs it with norm clipping). Norm clipping leaves a flipped update at the honest norm,
# so four of 24 still pull the mean back by a third.
EXPECTED_TO_FAIL = {("cosine", "boost")}
# Krum returns one honest update, so it is off the honest mean by that update's own noise.
TOLERANCE = {("norm-clip", "flip"): 0.4, ("krum", "flip"): 0.4, ("krum", "boost"): 0.4}


@pytest.mark.parametrize("kind", ["flip", "boost"])
@pytest.mark.parametrize("name", list(ROBUST))
@pytest.mark.parametrize("with_reference", [True, False])
def test_robust_rules_stay_near_the_honest_mean_under_attack(
    name: str, kind: str, with_reference: bool
) -> None:
    if (name, kind) in EXPECTED_TO_FAIL or (name == "fltrust" and not with_reference):
        pytest.skip("not a defence against this attack")
    x, honest_mean, server = _attacked(kind)
    ref = server if with_reference else None
    scale = np.linalg.norm(honest_mean)
    fedavg = make_defence("fedavg").aggregate(x, np.ones(len(x)), ref).mean
    got = make_defence(name, **ROBUST[name]).aggregate(x, np.ones(len(x)), ref).mean
    assert np.linalg.norm(fedavg - honest_mean) > 1.5 * scale
    assert np.linalg.norm(got - honest_mean) < TOLERANCE.get((name, kind), 0.25) * scale


def test_cosine_does_let_a_boosted_update_through() -> None:
    x, _, server = _attacked("boost")
    result = make_defence("cosine").aggregate(x, np.ones(len(x)), server)
    assert result.accepted.all()


# ----------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    ("updates", "weights", "reference", "message"),
    [
        (np.zeros(3, np.float32), np.ones(3), None, "non-empty \\(n, d\\) matrix"),
        (np.zeros((0, 3), np.float32), np.ones(0), None, "non-empty"),
        (np.zeros((2, 0), np.float32), np.ones(2), None, "non-empty"),
        (np.zeros((2, 3), np.complex64), np.ones(2), None, "real numbers"),
        (np.zeros((2, 3), np.float32), np.ones(3), None, "weights must have shape \\(2,\\)"),
        (np.zeros((2, 3), np.float32), np.array([1.0, -1.0]), None, "non-negative"),
        (np.zeros((2, 3), np.float32), np.zeros(2), None, "not all zero"),
        (np.zeros((2, 3), np.float32), np.array([1.0, np.nan]), None, "finite"),
        (
            np.zeros((2, 3), np.float32),
            np.ones(2),
            np.ones(4),
            "reference must have shape \\(3,\\)",
        ),
        (
            np.zeros((2, 3), np.float32),
            np.ones(2),
            np.array([1.0, np.nan, 0]),
            "reference must be finite",
        ),
    ],
)
@pytest.mark.parametrize("name", DEFENCES)
def test_invalid_input_is_a_clear_value_error(name, updates, weights, reference, message) -> None:
    if name in ("fedavg", "median", "norm-clip", "trimmed-mean", "krum", "multi-krum") and (
        "reference" in message
    ):
        pytest.skip("ignores the reference")
    if name == "fltrust" and reference is None:
        reference = np.ones(updates.shape[-1])
    with pytest.raises(ValueError, match=message):
        make_defence(name).aggregate(updates, weights, reference)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("nope", {}, "unknown defence 'nope'; choose from fedavg, cosine"),
        ("fedavg", {"eta": 1.0}, "'fedavg' does not take eta"),
        ("cosine", {"threshold": 1.5}, "threshold must lie in"),
        ("norm-clip", {"max_norm": 0.0}, "max_norm must be"),
        ("trimmed-mean", {"beta": 0.5}, "beta must lie in"),
        ("trimmed-mean", {"f": 1.5}, "f must be a non-negative whole number"),
        ("krum", {"f": -1}, "f must be"),
        ("multi-krum", {"m": 0}, "m must be at least 1"),
        ("centred-clip", {"tau": -1.0}, "tau must be"),
        ("centred-clip", {"iterations": 0}, "iterations must be at least 1"),
        ("fltrust", {"threshold": 0.0}, "does not take threshold"),
        ("cosine", {"threshold": "high"}, "bad parameter value"),
    ],
)
def test_bad_names_and_parameters_are_value_errors(name: str, params, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_defence(name, **params)


def test_the_registry_and_the_public_names() -> None:
    assert DEFENCES == (
        "fedavg", "cosine", "norm-clip", "median", "trimmed-mean",
        "krum", "multi-krum", "centred-clip", "fltrust",
    )  # fmt: skip
    for name in DEFENCES:
        defence: Defence = make_defence(name)
        assert defence.name == name
    assert {"FedAvgDefence", "MedianDefence", "RobustAggregator"} <= set(robust.__all__)


def test_importing_robust_does_not_load_torch() -> None:
    code = "import sys, qflare.fl.robust; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ----------------------------------------------------------------------------- the aggregator


def _updates(rows: Rows, ids: list[int] | None = None) -> dict[int, tuple[np.ndarray, int]]:
    ids = ids or list(range(len(rows)))
    return {c: (np.array(r, dtype=np.float32), 1) for c, r in zip(ids, rows, strict=True)}


def test_aggregator_records_rejected_ids_per_round_and_uses_the_previous_mean() -> None:
    agg = RobustAggregator(make_defence("cosine"), previous_as_reference=True)
    first = agg.aggregate(1, _updates([[1.0, 1.0], [1.0, 3.0], [-1.0, -1.0]], [4, 9, 2]))
    assert agg.rejected[1] == [2]  # round 1: the median (1, 1) is the reference
    assert first.num_clients == 2 and first.total_weight == 2.0
    assert first.mean().tolist() == pytest.approx([1.0, 2.0])
    # round 2: the previous mean (1, 2) is the reference, so (2, -1.1) points away
    agg.aggregate(2, _updates([[2.0, -1.1], [0.0, 1.0]], [4, 9]))
    assert agg.rejected[2] == [4]


def test_aggregator_uses_the_reference_callback() -> None:
    asked: list[int] = []

    def root_update(round_id: int) -> np.ndarray:
        asked.append(round_id)
        return np.array([0.0, 1.0])

    agg = RobustAggregator(make_defence("fltrust"), reference=root_update)
    result = agg.aggregate(3, _updates([[0.0, 2.0], [0.0, -2.0], [1.0, 1.0]]))
    assert asked == [3] and agg.rejected[3] == [1]
    assert result.num_clients == 2


def test_aggregator_with_no_updates_is_empty() -> None:
    agg = RobustAggregator(make_defence("median"))
    result = agg.aggregate(1, {})
    assert result.empty and agg.rejected[1] == []


@pytest.mark.parametrize("strategy", [FedAvg(), FedAdam()])
def test_a_round_with_everything_refused_leaves_the_model_unchanged(strategy) -> None:
    agg = RobustAggregator(make_defence("cosine"), reference=lambda _r: np.array([1.0, 1.0]))
    result = agg.aggregate(1, _updates([[-1.0, 0.0], [0.0, -2.0]]))
    assert isinstance(result, AggregateResult) and result.empty
    assert agg.rejected[1] == [0, 1]
    model = np.array([0.5, -0.5], dtype=np.float32)
    strategy.initialize(model)
    assert np.array_equal(strategy.apply(model, result), model)


def test_an_empty_round_does_not_replace_the_previous_reference() -> None:
    agg = RobustAggregator(make_defence("cosine"), previous_as_reference=True)
    agg.aggregate(1, _updates([[1.0, 0.0], [1.0, 0.2], [0.8, 0.0]]))
    assert agg.aggregate(2, _updates([[-1.0, 0.0]])).empty
    assert agg.rejected[3 - 1] == [0]
    # round 3 still judges against round 1's mean, not a zero vector
    agg.aggregate(3, _updates([[1.0, 0.1], [-1.0, 0.0]]))
    assert agg.rejected[3] == [1]


def test_by_default_cosine_judges_each_round_by_its_own_median_and_never_locks_up() -> None:
    """Honest updates that turn away from last round's mean: a stale reference refuses them all,
    round after round (the model freezes); the round's own median follows them."""
    turned = _updates([[-1.0, 0.1], [-1.0, 0.3], [-0.8, 0.2], [-0.5, -5.0]])
    stale = RobustAggregator(make_defence("cosine"), previous_as_reference=True)
    stale.aggregate(1, _updates([[1.0, 0.0], [1.0, 0.2], [0.8, 0.0]]))
    assert all(stale.aggregate(r, turned).empty for r in (2, 3, 4))
    agg = RobustAggregator(make_defence("cosine"))
    agg.aggregate(1, _updates([[1.0, 0.0], [1.0, 0.2], [0.8, 0.0]]))
    result = agg.aggregate(2, turned)
    assert agg.rejected[2] == [3] and result.num_clients == 3
    assert result.mean().tolist() == pytest.approx([-14 / 15, 0.2])
