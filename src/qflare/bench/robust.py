"""Robust aggregation rules timed at enclave scale: ``n`` updates of ``d`` float32 parameters.

Every defence in :data:`qflare.fl.robust.DEFENCES` aggregates the same random round: ``n - k``
honest updates ``u + noise`` and ``k`` outliers (sign-flipped and scaled tenfold), with a noisy
copy of ``u`` as the reference (the previous global update / the root-dataset update). Each is
run ``repeat`` times; the median wall time is reported with the targets (cosine and FedAvg 1 s,
median and trimmed mean 2 s, Krum 10 s at ``n = 100``, ``d = 10**6`` on two cores), the peak
memory each call allocates (traced in one extra, untimed call; the 400 MB input excluded) and the
process's peak RSS, the outliers each rule accepted and its distance from the honest mean. The cosine rule is also timed
without a reference (round 1: the coordinate-wise median is the reference).
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from qflare.fl.robust import DEFENCES, Defence, make_defence

TARGETS_S: dict[str, float] = {
    "fedavg": 1.0,
    "cosine": 1.0,
    "median": 2.0,
    "trimmed-mean": 2.0,
    "krum": 10.0,
}


@dataclass(frozen=True)
class RobustBenchConfig:
    """One benchmark run: ``clients`` updates of ``dim`` parameters, ``outliers`` of them bad."""

    clients: int = 100
    dim: int = 1_000_000
    outliers: float = 0.05
    repeat: int = 3
    seed: int = 0


def _loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages as ``/proc/loadavg`` gives them."""
    try:
        with open("/proc/loadavg", encoding="ascii") as fh:
            return [float(v) for v in fh.read().split()[:3]]
    except OSError:
        return list(os.getloadavg())


def make_round(
    cfg: RobustBenchConfig,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64], npt.NDArray[np.float64], int]:
    """The updates (outliers first), the honest mean, the reference, and the outlier count."""
    rng = np.random.default_rng(cfg.seed)
    bad = min(round(cfg.outliers * cfg.clients), cfg.clients - 1)
    direction = rng.standard_normal(cfg.dim, dtype=np.float32)
    updates = rng.standard_normal((cfg.clients, cfg.dim), dtype=np.float32)
    updates *= 0.5
    updates += direction
    updates[:bad] *= -10.0
    honest = updates[bad:].mean(axis=0, dtype=np.float64)
    noise = rng.standard_normal(cfg.dim)
    reference = direction.astype(np.float64) + 0.5 * noise
    return updates, honest, reference, bad


def _time(run: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    """Wall times of ``repeat`` calls, and the last result."""
    times: list[float] = []
    result: Any = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return times, result


def _peak_alloc_mb(run: Callable[[], Any]) -> float:
    """Peak memory allocated during one (untimed) call, in MB, traced by ``tracemalloc``.

    numpy reports its array buffers to ``tracemalloc``, so this counts every temporary the rule
    makes (the input matrix, allocated before, is not counted).
    """
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def _case(
    defence: Defence,
    updates: npt.NDArray[np.float32],
    reference: npt.NDArray[np.float64] | None,
    honest: npt.NDArray[np.float64],
    bad: int,
    repeat: int,
) -> dict[str, Any]:
    weights = np.ones(updates.shape[0], dtype=np.float64)

    def call() -> Any:
        return defence.aggregate(updates, weights, reference)

    times, result = _time(call, repeat)
    scale = float(np.linalg.norm(honest))
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "peak_alloc_mb": round(_peak_alloc_mb(call), 1),
        "accepted": int(result.accepted.sum()),
        "outliers_accepted": int(result.accepted[:bad].sum()),
        "relative_error_vs_honest_mean": float(np.linalg.norm(result.mean - honest)) / scale,
    }


def run_robust_bench(
    cfg: RobustBenchConfig, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Time every defence on one random round; medians, memory, targets and the load average."""
    load_before = _loadavg()
    updates, honest, reference, bad = make_round(cfg)
    defences: dict[str, dict[str, Any]] = {}
    for name in DEFENCES:
        if progress is not None:
            progress(name)
        case = _case(make_defence(name), updates, reference, honest, bad, cfg.repeat)
        target = TARGETS_S.get(name)
        case["target_s"] = target
        case["met"] = None if target is None else case["median_s"] <= target
        defences[name] = case
    if progress is not None:
        progress("cosine without a reference")
    round1 = _case(make_defence("cosine"), updates, None, honest, bad, cfg.repeat)
    return {
        "benchmark": "robust",
        "config": {**asdict(cfg), "outlier_rows": bad, "dtype": "float32"},
        "input_mb": updates.nbytes / 2**20,
        "attack": "outliers: the honest distribution sign-flipped and scaled x10; weights equal",
        "reference": "direction + N(0, 0.25) noise (previous global / root-dataset update)",
        "defences": defences,
        "cosine_without_reference": round1,
        "targets_at": "n = 100, d = 10**6 on two cores (judged at any size, meaningful there)",
        "targets_met": all(c["met"] for c in defences.values() if c["met"] is not None),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_average": {"before": load_before, "after": _loadavg()},
        "cpus": os.cpu_count(),
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpu": platform.processor() or platform.machine(),
            "system": platform.platform(),
        },
    }
