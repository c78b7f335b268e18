"""``qflare bench secagg``: one SecAgg+ round in-process, per-round timings against the floors."""

from __future__ import annotations

import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from qflare.bench.floors import add_seconds, keystream_seconds
from qflare.crypto import RingVector, ring_dtype
from qflare.protocol.graph import find_params
from qflare.protocol.messages import RoundConfig
from qflare.protocol.policy import ClientPolicy, check_round_params
from qflare.protocol.secagg import State
from qflare.sim.cohort import Cohort, CohortResult, expected_sum


@dataclass(frozen=True)
class SecAggBenchConfig:
    """Parameters of one benchmark point."""

    clients: int = 100
    dim: int = 100_000
    dropout: float = 0.0
    drop_stage: str = "R2_MASKED_INPUT"
    k: int | None = None
    t: int | None = None
    modulus_bits: int = 32
    scheme: str = "mldsa65"
    repeat: int = 1
    seed: int = 0
    corrupt: float = 0.05


def _resolve(cfg: SecAggBenchConfig) -> tuple[int, int]:
    if cfg.k is not None and cfg.t is not None:
        return cfg.k, cfg.t
    params = find_params(cfg.clients, cfg.corrupt, dropout_fraction=max(cfg.dropout, 0.01))
    return cfg.k or params.k, cfg.t or params.t


def _inputs(dim: int, bits: int) -> Callable[[int], RingVector]:
    base = np.random.default_rng(7).integers(0, 2**31, dim, dtype=np.int64).astype(ring_dtype(bits))

    def make(u: int) -> RingVector:
        out: RingVector = base + np.asarray(u, dtype=base.dtype)
        return out

    return make


def _one_run(
    cfg: SecAggBenchConfig, k: int, t: int, run: int, progress: Callable[[str], None] | None
) -> tuple[CohortResult, float, bool]:
    rc = RoundConfig(
        session="bench",
        round_id=run + 1,
        participants=tuple(range(cfg.clients)),
        k=k,
        t=t,
        dim=cfg.dim + 1,
        modulus_bits=cfg.modulus_bits,
        signature_scheme=cfg.scheme,
    )
    n_drop = round(cfg.dropout * cfg.clients)
    dropouts = {
        u: State[cfg.drop_stage]
        for u in range(0, cfg.clients, max(1, cfg.clients // max(n_drop, 1)))[:n_drop]
    }
    policy = ClientPolicy(corrupt_fraction=cfg.corrupt)
    cohort = Cohort(rc, seed=cfg.seed + run, dropouts=dropouts, policy=policy)
    inputs = _inputs(rc.dim, cfg.modulus_bits)
    t0 = time.perf_counter()
    res = cohort.run(inputs, progress=progress)
    wall = time.perf_counter() - t0
    ok = res.total is not None and bool(
        np.array_equal(res.total, expected_sum(inputs, res.survivors, rc.dim, cfg.modulus_bits))
    )
    return res, wall, ok


def _per_round(res: CohortResult) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for state in (
        State.R0_ADVERTISE_KEYS,
        State.R0_REVEAL_SEED,
        State.R1_SHARE_KEYS,
        State.R2_MASKED_INPUT,
        State.R3_CONSISTENCY,
        State.R4_UNMASK,
    ):
        times = list(res.client_seconds.get(state, {}).values())
        sizes = list(res.upload_bytes.get(state, {}).values())
        out[state.value] = {
            "server_s": res.server_seconds.get(state, 0.0),
            "client_mean_s": statistics.fmean(times) if times else 0.0,
            "client_max_s": max(times) if times else 0.0,
            "upload_bytes_mean": statistics.fmean(sizes) if sizes else 0.0,
        }
    return out


def run_secagg_bench(
    cfg: SecAggBenchConfig, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the benchmark point ``repeat`` times; return medians, floors and ratios as a dict."""
    k, t = _resolve(cfg)
    check_round_params(  # the clients would decline the round: say so before running it
        cfg.clients, k, t, ClientPolicy(corrupt_fraction=cfg.corrupt), state="BENCH"
    )
    ks = keystream_seconds(cfg.dim + 1, cfg.modulus_bits)
    add = add_seconds(cfg.dim + 1, cfg.modulus_bits)
    runs = [_one_run(cfg, k, t, r, progress) for r in range(cfg.repeat)]
    res = runs[-1][0]
    r2_times = [
        statistics.fmean(r.client_seconds[State.R2_MASKED_INPUT].values()) for r, _, _ in runs
    ]
    masks_per_client = min(k, cfg.clients)  # self mask + (k-1) pairwise masks
    r2_floor = masks_per_client * ks
    whole = [w for _, w, _ in runs]
    compute = [
        r.server_total_seconds() + sum(sum(v.values()) for v in r.client_seconds.values())
        for r, _, _ in runs
    ]
    upload = statistics.fmean(res.upload_bytes[State.R2_MASKED_INPUT].values())
    return {
        "benchmark": "secagg",
        "config": {**asdict(cfg), "k": k, "t": t},
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "system": platform.platform(),
        },
        "exact_sum": all(ok for _, _, ok in runs),
        "survivors": len(res.survivors),
        "server_state": res.server_state.value,
        "server_compute_s": statistics.median(r.server_total_seconds() for r, _, _ in runs),
        "client_compute_mean_s": statistics.median(r.mean_client_seconds() for r, _, _ in runs),
        "client_r2_mask_s": statistics.median(r2_times),
        "round_compute_all_parties_s": statistics.median(compute),
        "round_wall_in_process_s": statistics.median(whole),
        "floors": {
            "keystream_one_mask_s": ks,
            "keystream_gbps": (cfg.dim + 1) * (cfg.modulus_bits // 8) / ks / 1e9,
            "numpy_add_one_vector_s": add,
            "numpy_add_gbps": (cfg.dim + 1) * (cfg.modulus_bits // 8) / add / 1e9,
            "client_r2_keystream_floor_s": r2_floor,
        },
        "ratios": {
            "client_r2_over_keystream_floor": statistics.median(r2_times) / r2_floor,
            "upload_over_float32": upload / (4 * cfg.dim),
        },
        "per_round": _per_round(res),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_note": "whole process: all simulated clients and the server share it",
    }
