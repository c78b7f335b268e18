"""Hardware floors measured in-process: AES-CTR keystream and numpy ring addition."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from qflare.crypto import MaskPrg, SecretBytes


def median_seconds(fn: Callable[[], object], repeat: int = 7, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def keystream_seconds(dim: int, modulus_bits: int = 32) -> float:
    """Median time to expand one AES-128-CTR mask of ``dim`` ring elements into a preallocated buffer."""
    prg = MaskPrg(dim, modulus_bits)
    seed = SecretBytes(b"\x01" * 16)
    return median_seconds(lambda: prg._keystream(seed))


def add_seconds(dim: int, modulus_bits: int = 32) -> float:
    """Median time of one in-place numpy ring addition of ``dim`` elements."""
    dtype = np.uint32 if modulus_bits == 32 else np.uint64
    a = np.ones(dim, dtype=dtype)
    b = np.ones(dim, dtype=dtype)
    return median_seconds(lambda: np.add(a, b, out=a))
