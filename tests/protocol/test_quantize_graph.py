import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.crypto import DeterministicRng
from qflare.protocol.graph import find_params, neighbourhoods
from qflare.protocol.quantize import QuantConfig, dequantize, quantize


@settings(max_examples=60)
@given(bits=st.sampled_from([32, 64]), n=st.integers(1, 12), seed=st.integers(0, 2**20))
def test_weighted_sum_decodes_within_quantisation_error(bits, n, seed):
    rng = np.random.default_rng(seed)
    cfg = QuantConfig(clip=2.0, modulus_bits=bits, max_total_weight=1000)
    xs = [rng.uniform(-2, 2, 50) for _ in range(n)]
    ws = [int(w) for w in rng.integers(1, 1000 // n + 1, n)]
    acc = np.zeros(51, dtype=np.uint32 if bits == 32 else np.uint64)
    drbg = DeterministicRng(seed)
    for x, w in zip(xs, ws, strict=True):
        np.add(acc, quantize(x, w, cfg, drbg), out=acc)
    total, weight = dequantize(acc, cfg)
    assert weight == sum(ws)
    exact = sum(w * x for w, x in zip(ws, xs, strict=True))
    assert np.max(np.abs(total - exact)) <= sum(ws) / cfg.scale + 1e-9


def test_clipping_and_unbiased_rounding():
    cfg = QuantConfig(clip=1.0, modulus_bits=32, max_total_weight=1)
    q = quantize(np.array([5.0, -5.0]), 1, cfg, DeterministicRng(1))
    total, _ = dequantize(q, cfg)
    assert total.tolist() == [1.0, -1.0]
    # A value halfway between two grid points rounds up about half the time.
    coarse = QuantConfig(clip=1.0, modulus_bits=32, max_total_weight=2**22)  # 9 value bits
    v = 0.5 / coarse.scale
    rounded = [
        dequantize(quantize(np.array([v]), 1, coarse, DeterministicRng(i)), coarse)[0][0]
        for i in range(400)
    ]
    assert 0.4 < np.mean(np.array(rounded) > 0) < 0.6


def test_quantize_rejects_bad_input():
    cfg = QuantConfig(max_total_weight=10)
    with pytest.raises(ValueError):
        quantize(np.array([np.nan]), 1, cfg, DeterministicRng(1))
    with pytest.raises(ValueError):
        quantize(np.array([0.0]), 11, cfg, DeterministicRng(1))
    with pytest.raises(ValueError):
        QuantConfig(modulus_bits=32, max_total_weight=2**30)
    with pytest.raises(ValueError):
        QuantConfig(modulus_bits=16)


def test_harary_graph_is_regular_symmetric_and_seeded():
    ids = list(range(50))
    g = neighbourhoods(ids, 9, b"seed")
    assert all(len(nb) == 8 and u not in nb for u, nb in g.items())
    assert all(u in g[v] for u, nb in g.items() for v in nb)
    assert g == neighbourhoods(ids, 9, b"seed")
    assert g != neighbourhoods(ids, 9, b"other")
    full = neighbourhoods(range(5), 7, b"s")
    assert all(nb == set(range(5)) - {u} for u, nb in full.items())
    with pytest.raises(ValueError):
        neighbourhoods(ids, 8, b"s")


def test_finder_meets_its_bounds():
    for n in (20, 100, 1000):
        p = find_params(n, corrupt_fraction=0.05, dropout_fraction=0.1)
        assert p.k % 2 == 1 or p.k >= n
        assert 2 * p.t > p.k
        assert p.privacy_failure <= 2**-40 and p.correctness_failure <= 2**-20
    assert find_params(1000).k < 100  # sparse: far below n
