"""Start-up time of the ``qflare`` command: a fresh interpreter per run, as an operator sees it.

Each run is ``python -m qflare.cli ARGS`` in a new process (import, parse, print, exit); the
median over the runs is reported with the machine's load average, since on a shared machine the
figure moves with what else runs. The target is under one second for ``--help`` and
``--version``; ``tests/cli/test_startup.py`` checks the cause (no heavy import) on every run.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

CASES: tuple[tuple[str, ...], ...] = (("--help",), ("--version",), ("server", "--help"))
TARGET_S = 1.0


def _once(args: Sequence[str]) -> float:
    """Seconds for one ``python -m qflare.cli ARGS`` in a fresh interpreter."""
    start = time.perf_counter()
    subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "qflare.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - start


def run_startup_bench(
    repeat: int = 11, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Time every case ``repeat`` times, interleaved; medians, extremes and the load average."""
    times: dict[str, list[float]] = {" ".join(case): [] for case in CASES}
    load_before = os.getloadavg()
    for i in range(repeat):
        if progress is not None:
            progress(f"run {i + 1}/{repeat}")
        for case in CASES:
            times[" ".join(case)].append(_once(case))
    cases = {
        name: {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts)}
        for name, ts in times.items()
    }
    return {
        "benchmark": "cli_startup",
        "command": f"{sys.executable} -m qflare.cli ARGS (fresh interpreter per run)",
        "repeat": repeat,
        "cases": cases,
        "target_s": TARGET_S,
        "met": all(cases[k]["median_s"] < TARGET_S for k in ("--help", "--version")),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
    }
