"""Neighbour graphs for SecAgg+: Harary graphs over a public random permutation, and the finder.

A client's *closed* neighbourhood (itself plus its neighbours) has ``k`` members; they hold its
``k`` Shamir shares. ``k >= n`` gives the complete graph, i.e. classic SecAgg.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from qflare.crypto import DeterministicRng


def _permutation(ids: Sequence[int], seed: bytes) -> list[int]:
    """Fisher-Yates shuffle driven by an AES-CTR DRBG on the public seed (rejection sampling)."""
    rng = DeterministicRng(seed)
    out = list(ids)
    for i in range(len(out) - 1, 0, -1):
        bound = i + 1
        limit = (2**64 // bound) * bound
        while True:
            r = int.from_bytes(rng.random_bytes(8), "big")
            if r < limit:
                break
        j = r % bound
        out[i], out[j] = out[j], out[i]
    return out


@lru_cache(maxsize=64)
def _graph(ids: tuple[int, ...], k: int, seed: bytes) -> dict[int, frozenset[int]]:
    n = len(ids)
    if k >= n:
        everyone = frozenset(ids)
        return {u: everyone - {u} for u in ids}
    if k < 1 or k % 2 == 0:
        raise ValueError(f"k must be odd (closed neighbourhood of a Harary graph), got {k}")
    order = _permutation(ids, seed)
    half = (k - 1) // 2
    return {
        u: frozenset(order[(pos + off) % n] for off in range(-half, half + 1) if off != 0)
        for pos, u in enumerate(order)
    }


def neighbourhoods(ids: Sequence[int], k: int, seed: bytes) -> dict[int, frozenset[int]]:
    """Open neighbourhoods (excluding self) of the Harary graph H(k-1, n) over a permutation.

    Args:
        ids: Participant ids.
        k: Closed-neighbourhood size; odd, or ``>= len(ids)`` for the complete graph.
        seed: Public seed of the permutation.
    """
    ids_t = tuple(sorted(ids))
    if len(set(ids_t)) != len(ids_t):
        raise ValueError("participant ids must be distinct")
    return _graph(ids_t, k, bytes(seed))


@dataclass(frozen=True, slots=True)
class GraphParams:
    """Result of the parameter finder.

    Attributes:
        k: Closed-neighbourhood size (shares per client).
        t: Shamir threshold.
        privacy_failure: Upper bound on P(adversary gets t shares of an honest client).
        correctness_failure: Upper bound on P(some client keeps fewer than t live holders).
    """

    k: int
    t: int
    privacy_failure: float
    correctness_failure: float


def _hypergeom_tail(pop: int, marked: int, draws: int, at_least: int) -> float:
    """P(X >= at_least) for X ~ Hypergeometric(pop, marked, draws)."""
    if at_least <= 0:
        return 1.0
    total = math.comb(pop, draws)
    hi = min(marked, draws)
    tail = sum(
        math.comb(marked, i) * math.comb(pop - marked, draws - i) for i in range(at_least, hi + 1)
    )
    return tail / total


def privacy_failure(n: int, k: int, t: int, corrupt_fraction: float) -> float:
    """Union bound over ``n`` clients on P(corrupt neighbours ``c >= 2t - k``) for ``(k, t)``.

    For the complete graph (``k >= n``) the count is exact: ``floor(corrupt_fraction·n)``
    corrupt clients are all neighbours, so the bound is 0 or 1.
    """
    corrupt = math.floor(corrupt_fraction * n)
    closed = min(k, n)
    if k >= n:
        return 0.0 if corrupt < 2 * t - closed else 1.0
    return n * _hypergeom_tail(n - 1, corrupt, k - 1, 2 * t - k)


def complete_threshold(n: int, corrupt_fraction: float) -> int:
    """Smallest ``t`` of the complete graph with ``2t > n + corrupt`` (privacy against collusion)."""
    return (n + math.floor(corrupt_fraction * n)) // 2 + 1


def find_params(
    n: int,
    corrupt_fraction: float = 0.05,
    dropout_fraction: float = 0.1,
    security_bits: int = 40,
    correctness_bits: int = 20,
) -> GraphParams:
    """Smallest odd ``k`` (and a ``t``) meeting privacy and correctness bounds for ``n`` clients.

    Model (union bound over the ``n`` clients; a neighbourhood over a uniformly random permutation
    is a uniformly random set of ``k-1`` other clients):

    * privacy: the corrupt clients ``c`` among a client's ``k-1`` neighbours satisfy
      ``c < 2t - k`` except with probability ``2^-security_bits``. Then corrupt holders alone
      never reach ``t`` shares, and — since each honest client signs one survivor set per round
      and releases a share only when ``t`` members of the owner's neighbourhood signed the set it
      was shown — a lying server cannot make two disjoint groups of holders reveal the two
      different secrets of one honest client (that would need ``2(t - c) <= k - c`` honest
      signers);
    * correctness: at least ``t`` of a client's ``k-1`` neighbours survive except with
      probability ``2^-correctness_bits``;

    The graph's connectivity against partial-sum leakage (Bell et al., Sec. 4) is not modelled.

    Raises:
        ValueError: no ``k <= n`` satisfies the bounds (then use the complete graph or fewer
            expected dropouts).
    """
    if n < 2:
        raise ValueError("need at least two clients")
    dropped = math.ceil(dropout_fraction * n)
    budget_priv = 2.0**-security_bits
    budget_corr = 2.0**-correctness_bits / n
    for k in range(3, n, 2):
        others = k - 1
        for t in range(k // 2 + 1, k + 1):
            priv = privacy_failure(n, k, t, corrupt_fraction)
            if priv > budget_priv:
                continue
            corr = _hypergeom_tail(n - 1, dropped, others, others - t + 1)
            if corr <= budget_corr:
                return GraphParams(k, t, priv, corr * n)
            break  # larger t only hurts correctness
    complete_t = complete_threshold(n, corrupt_fraction)
    if complete_t + dropped <= n:
        return GraphParams(n, complete_t, 0.0, 0.0)
    raise ValueError(f"no (k, t) for n={n}, corrupt={corrupt_fraction}, dropout={dropout_fraction}")


def min_threshold(n: int, k: int, corrupt_fraction: float, security_bits: int) -> int | None:
    """Smallest ``t`` whose privacy bound for ``(n, k)`` is at most ``2^-security_bits``."""
    closed = min(k, n)
    for t in range(closed // 2 + 1, closed + 1):
        if privacy_failure(n, k, t, corrupt_fraction) <= 2.0**-security_bits:
            return t
    return None
