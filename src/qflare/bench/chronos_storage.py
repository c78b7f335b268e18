"""``qflare bench chronos-storage``: a CHRONOS device's trusted storage across model sizes.

For each d, one device runs on the simulated enclave (the other clients in software) through an
offline phase, an idle precomputation and one round; then :func:`~qflare.tee.storage_report`
measures what the device keeps in trusted storage (the simulated RPMB: hardware-unique key and
counters) and what the host keeps for it (the sealed epoch state). The claim under test is that
trusted storage stays below 700 bytes and does not grow with d.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from typing import Any

from qflare.bench.chronos_runs import chronos_config, enclave_device, make_inputs
from qflare.protocol.chronos import Mode
from qflare.protocol.graph import find_params

SECURE_STORAGE_TARGET_BYTES = 700
DEFAULT_DIMS = (10_000, 100_000, 1_000_000, 10_000_000)


def run_storage_bench(
    clients: int = 20,
    dims: Sequence[int] = DEFAULT_DIMS,
    mode: Mode = Mode.CHRONOS_DM,
    scheme: str = "mldsa65",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure one enclave device's storage at every ``d`` in ``dims``."""
    say = progress or (lambda _: None)
    params = find_params(clients, dropout_fraction=0.01)
    points: list[dict[str, Any]] = []
    for dim in dims:
        say(f"d = {dim:,}")
        ring = dim + 1
        cfg = chronos_config(mode, clients, params.k, params.t, ring, scheme, 1)
        device = enclave_device(cfg, seed, make_inputs(ring))
        points.append({"dim": dim, **device})
    secure = [int(p["secure_storage_bytes"]) for p in points]
    flat = len(set(secure)) == 1
    worst = max(secure)
    return {
        "benchmark": "chronos-storage",
        "config": {
            "clients": clients,
            "dims": list(dims),
            "mode": mode.value,
            "k": params.k,
            "t": params.t,
            "scheme": scheme,
        },
        "machine": {"python": platform.python_version(), "system": platform.platform()},
        "points": points,
        "secure_storage_bytes_max": worst,
        "flat_in_d": flat,
        "target": {
            "secure_storage_bytes_below": SECURE_STORAGE_TARGET_BYTES,
            "met": flat
            and worst < SECURE_STORAGE_TARGET_BYTES
            and all(p["exact_sum"] for p in points),
        },
        "note": "trusted storage = the simulated RPMB files (hardware-unique key, MAC'd counters); "
        "the sealed epoch state is kept by the host and opens only inside the enclave",
    }
