"""Attack 8: weights whose *sum* overflows the ring's headroom.

Each weight alone fitting is not enough: n clients each at ``max_total_weight`` wrap the sum.
Clients cap their weight at ``W // n``; the server refuses a total weight above ``W`` rather
than applying a wrapped sum.
"""

from __future__ import annotations

import numpy as np
import pytest

from qflare.crypto import DeterministicRng
from qflare.protocol.quantize import (
    QuantConfig,
    RingOverflowError,
    dequantize,
    quantize,
    weight_cap,
)

CFG = QuantConfig(clip=1.0, modulus_bits=32, max_total_weight=1000)


def _sum(vectors: list[np.ndarray]) -> np.ndarray:
    acc = np.zeros_like(vectors[0])
    for v in vectors:
        np.add(acc, v, out=acc)
    return acc


def test_uncapped_weights_would_wrap_and_the_server_refuses_the_sum():
    x = np.full(8, 0.9)
    rng = DeterministicRng(1)
    each_fits = [quantize(x, CFG.max_total_weight, CFG, rng) for _ in range(5)]
    with pytest.raises(RingOverflowError):
        dequantize(_sum(each_fits), CFG)


def test_capped_weights_always_sum_inside_the_ring():
    x = np.full(8, 0.9)
    rng = DeterministicRng(2)
    cap = weight_cap(CFG, 5)
    total, weight = dequantize(_sum([quantize(x, cap, CFG, rng) for _ in range(5)]), CFG)
    assert weight == 5 * cap <= CFG.max_total_weight
    np.testing.assert_allclose(total, 5 * cap * x, atol=weight / CFG.scale)


def test_a_cohort_larger_than_the_headroom_is_refused_up_front():
    with pytest.raises(ValueError, match="no weight"):
        weight_cap(CFG, 1001)
