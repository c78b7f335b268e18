import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qflare.fl import PartitionSpec, dirichlet_partition, parse_partition, partition


def _labels(n: int, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=n).astype(np.int64)


def _max_class_share(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in parts]))


SPECS = ["iid", "dirichlet:0.3", "dirichlet:5", "shards:1", "shards:3"]


@given(
    n=st.integers(200, 600),
    clients=st.integers(1, 10),
    spec=st.sampled_from(SPECS),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_example_lands_on_exactly_one_client(
    n: int, clients: int, spec: str, seed: int
) -> None:
    labels = _labels(n, seed=seed % 1000)
    parts = partition(labels, clients, spec, seed, min_samples=5)
    assert len(parts) == clients
    merged = np.concatenate(parts)
    assert np.array_equal(np.sort(merged), np.arange(n))
    assert all(np.all(np.diff(p) > 0) for p in parts)


@pytest.mark.parametrize("spec", SPECS)
def test_a_seed_reproduces_a_split_exactly(spec: str) -> None:
    labels = _labels(500)
    first = partition(labels, 7, spec, seed=42)
    second = partition(labels, 7, spec, seed=42)
    third = partition(labels, 7, spec, seed=43)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(np.array_equal(a, c) for a, c in zip(first, third, strict=True))


def test_dirichlet_small_alpha_is_skewed_and_large_alpha_is_not() -> None:
    labels = _labels(2000)
    iid = partition(labels, 10, "iid", seed=0)
    skewed = partition(labels, 10, "dirichlet:0.1", seed=0)
    mild = partition(labels, 10, "dirichlet:100", seed=0)
    assert _max_class_share(labels, iid) < 0.2
    assert _max_class_share(labels, mild) < 0.2
    assert _max_class_share(labels, skewed) > 0.5


def test_dirichlet_respects_the_minimum_client_size() -> None:
    labels = _labels(1000)
    parts = dirichlet_partition(labels, 20, alpha=0.3, seed=3, min_samples=20)
    assert min(len(p) for p in parts) >= 20


def test_dirichlet_refuses_impossible_sizes() -> None:
    with pytest.raises(ValueError):
        dirichlet_partition(_labels(100), 20, alpha=0.5, seed=0, min_samples=10)


def test_shards_give_few_classes_per_client() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = partition(labels, 10, "shards:2", seed=0)
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)
    assert {len(p) for p in parts} == {100}


def test_parse_partition_specs() -> None:
    assert parse_partition("IID") == PartitionSpec("iid")
    assert parse_partition(" dirichlet:0.5 ") == PartitionSpec("dirichlet", alpha=0.5)
    assert parse_partition("shards:2") == PartitionSpec("shards", shards_per_client=2)
    assert str(parse_partition("dirichlet:0.5")) == "dirichlet:0.5"
    for bad in ["", "iid:3", "dirichlet", "dirichlet:-1", "dirichlet:nan", "shards:0", "zipf:2"]:
        with pytest.raises(ValueError):
            parse_partition(bad)
