"""Split a training set across clients: IID, Dirichlet label skew, and label shards.

Every partitioner returns one sorted index array per client; together they cover every
example exactly once. A fixed seed reproduces a split bit for bit.

Spec strings: ``"iid"``, ``"dirichlet:<alpha>"`` (e.g. ``"dirichlet:0.5"``) and
``"shards:<k>"`` (``k`` label-sorted shards per client, McMahan et al. 2017).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "IndexArray",
    "PartitionSpec",
    "dirichlet_partition",
    "iid_partition",
    "parse_partition",
    "partition",
    "shard_partition",
]

IndexArray = npt.NDArray[np.int64]
PartitionKind = Literal["iid", "dirichlet", "shards"]


@dataclass(frozen=True)
class PartitionSpec:
    """A parsed partition spec.

    Attributes:
        kind: ``"iid"``, ``"dirichlet"`` or ``"shards"``.
        alpha: Dirichlet concentration (smaller is more skewed); used by ``"dirichlet"``.
        shards_per_client: Shards each client receives; used by ``"shards"``.
    """

    kind: PartitionKind
    alpha: float = 0.0
    shards_per_client: int = 0

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        if self.kind == "shards":
            return f"shards:{self.shards_per_client}"
        return "iid"


def parse_partition(spec: str) -> PartitionSpec:
    """Parse ``"iid"``, ``"dirichlet:<alpha>"`` or ``"shards:<k>"``.

    Args:
        spec: The spec string (case-insensitive, surrounding spaces ignored).

    Returns:
        The parsed spec.

    Raises:
        ValueError: On an unknown kind or a missing / invalid parameter.
    """
    kind, _, arg = spec.strip().lower().partition(":")
    if kind == "iid" and not arg:
        return PartitionSpec("iid")
    if kind == "dirichlet" and arg:
        alpha = float(arg)
        if not np.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"dirichlet alpha must be > 0, got {arg!r}")
        return PartitionSpec("dirichlet", alpha=alpha)
    if kind == "shards" and arg.isdigit() and int(arg) > 0:
        return PartitionSpec("shards", shards_per_client=int(arg))
    raise ValueError(f"bad partition spec {spec!r}; use iid, dirichlet:<alpha> or shards:<k>")


def _check(num_examples: int, num_clients: int, min_samples: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients * max(min_samples, 1) > num_examples:
        raise ValueError(
            f"{num_examples} examples cannot give {num_clients} clients "
            f">= {max(min_samples, 1)} each"
        )


def iid_partition(num_examples: int, num_clients: int, seed: int) -> list[IndexArray]:
    """Shuffle and deal examples into ``num_clients`` near-equal parts.

    Args:
        num_examples: Size of the training set.
        num_clients: Number of parts.
        seed: Seed of the shuffle.

    Returns:
        One sorted index array per client.
    """
    _check(num_examples, num_clients, 1)
    order = np.random.default_rng(seed).permutation(num_examples)
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, num_clients)]


def _dirichlet_draw(
    labels: npt.NDArray[np.int64], num_clients: int, alpha: float, rng: np.random.Generator
) -> list[IndexArray]:
    """One draw of the per-class Dirichlet allocation (Hsu et al. 2019, balanced variant)."""
    buckets: list[list[IndexArray]] = [[] for _ in range(num_clients)]
    sizes = np.zeros(num_clients, dtype=np.int64)
    cap = len(labels) / num_clients
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        share = rng.dirichlet(np.full(num_clients, alpha))
        share = np.where(sizes < cap, share, 0.0)  # clients already full get no more
        total = share.sum()
        share = share / total if total > 0 else np.full(num_clients, 1.0 / num_clients)
        cuts = (np.cumsum(share)[:-1] * len(members)).astype(np.int64)
        for client, chunk in enumerate(np.split(members, cuts)):
            buckets[client].append(chunk.astype(np.int64))
            sizes[client] += len(chunk)
    return [np.sort(np.concatenate(parts)) for parts in buckets]


def dirichlet_partition(
    labels: npt.NDArray[np.int64],
    num_clients: int,
    alpha: float,
    seed: int,
    *,
    min_samples: int = 10,
    max_tries: int = 1000,
) -> list[IndexArray]:
    """Label-skewed split: each class is spread over clients by ``Dir(alpha)`` proportions.

    Draws are repeated from the same seeded generator until every client holds at least
    ``min_samples`` examples, so the result is still a pure function of the seed.

    Args:
        labels: Integer label per training example.
        num_clients: Number of clients.
        alpha: Dirichlet concentration; small values (0.1) give few classes per client.
        seed: Seed of the generator.
        min_samples: Smallest acceptable client size.
        max_tries: Draws attempted before giving up.

    Returns:
        One sorted index array per client.

    Raises:
        ValueError: If the sizes are impossible or no draw met ``min_samples``.
    """
    _check(len(labels), num_clients, min_samples)
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        parts = _dirichlet_draw(np.asarray(labels, dtype=np.int64), num_clients, alpha, rng)
        if min(len(p) for p in parts) >= min_samples:
            return parts
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) draw gave every one of {num_clients} clients "
        f">= {min_samples} examples in {max_tries} tries; raise alpha or lower min_samples"
    )


def shard_partition(
    labels: npt.NDArray[np.int64], num_clients: int, shards_per_client: int, seed: int
) -> list[IndexArray]:
    """Sort by label, cut into ``num_clients * shards_per_client`` shards, deal them out.

    Args:
        labels: Integer label per training example.
        num_clients: Number of clients.
        shards_per_client: Shards each client receives (2 gives ~2 classes per client).
        seed: Seed of the within-class order and of the shard assignment.

    Returns:
        One sorted index array per client.
    """
    num_shards = num_clients * shards_per_client
    _check(len(labels), num_shards, 1)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(np.asarray(labels)[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    deal = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([shards[s] for s in row])).astype(np.int64) for row in deal]


def partition(
    labels: npt.NDArray[np.int64],
    num_clients: int,
    spec: PartitionSpec | str,
    seed: int,
    *,
    min_samples: int = 10,
) -> list[IndexArray]:
    """Split by a spec (object or string).

    Args:
        labels: Integer label per training example.
        num_clients: Number of clients.
        spec: A :class:`PartitionSpec` or a spec string.
        seed: Seed of the split.
        min_samples: Smallest client size for Dirichlet splits.

    Returns:
        One sorted index array per client.
    """
    parsed = parse_partition(spec) if isinstance(spec, str) else spec
    if parsed.kind == "dirichlet":
        return dirichlet_partition(labels, num_clients, parsed.alpha, seed, min_samples=min_samples)
    if parsed.kind == "shards":
        return shard_partition(labels, num_clients, parsed.shards_per_client, seed)
    return iid_partition(len(labels), num_clients, seed)
