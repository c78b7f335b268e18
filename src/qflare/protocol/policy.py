"""What a client accepts from the server: its own policy, checked against every round's parameters.

The server announces ``(n, k, t)`` and the cohort; all of it is hostile until checked here. A
client refuses (``LocalProtocolError``, reason ``PARAMS_REFUSED``, naming the violated rule):

* ``cohort_large_enough``: fewer than ``min_cohort`` participants (a round of two reveals the
  other's input by subtraction);
* ``threshold_is_majority``: a malformed graph or threshold, or ``2t <= min(k, n)`` (then two
  disjoint groups of ``t`` holders exist, and a server showing them different survivor sets
  collects both secrets of one client);
* ``params_meet_policy``: ``k`` below the parameter finder's ``k`` for the announced ``n`` at the
  client's own corruption rate and security level, or ``t`` below what the finder's privacy bound
  needs for the announced ``k``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from qflare.crypto import SignatureScheme, ring_dtype
from qflare.protocol.errors import AbortReason, LocalProtocolError
from qflare.protocol.graph import find_params, min_threshold

__all__ = [
    "ClientPolicy",
    "check_round_params",
    "config_is_well_formed",
    "cohort_large_enough",
    "params_meet_policy",
    "threshold_is_majority",
]


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """A client's own security policy (configured on the node, sealed into a CHRONOS enclave).

    Attributes:
        corrupt_fraction: Fraction of a cohort assumed to collude with the server.
        security_bits: Privacy failure probability the client accepts: ``2^-security_bits``.
        min_cohort: Fewest participants the client takes part with.
        max_seed_restarts: Times the server may restart the graph-seed exchange in one round
            (each restart lets it draw one more graph; see :mod:`qflare.protocol.seed`).
    """

    corrupt_fraction: float = 0.05
    security_bits: int = 40
    min_cohort: int = 3
    max_seed_restarts: int = 2

    def __post_init__(self) -> None:
        if not (math.isfinite(self.corrupt_fraction) and 0 <= self.corrupt_fraction < 0.5):
            raise ValueError("corrupt_fraction must be in [0, 0.5)")
        if not 1 <= self.security_bits <= 128:
            raise ValueError("security_bits must be in [1, 128]")
        if self.min_cohort < 2:
            raise ValueError("min_cohort must be at least 2")
        if not 0 <= self.max_seed_restarts <= 16:
            raise ValueError("max_seed_restarts must be in [0, 16]")


def _refuse(rule: str, why: str, state: str) -> LocalProtocolError:
    return LocalProtocolError(
        f"round parameters refused ({rule}): {why}",
        state=state,
        reason=AbortReason.PARAMS_REFUSED,
        http_status=409,
    )


def cohort_large_enough(n: int, policy: ClientPolicy, *, state: str) -> None:
    """Refuse cohorts smaller than the policy's minimum.

    Raises:
        LocalProtocolError: ``n < policy.min_cohort``.
    """
    if n < policy.min_cohort:
        raise _refuse("cohort_large_enough", f"{n} participants < {policy.min_cohort}", state)


def threshold_is_majority(n: int, k: int, t: int, *, state: str) -> None:
    """The graph is well formed and ``t`` is a strict majority of a closed neighbourhood.

    Raises:
        LocalProtocolError: ``k`` even below ``n``, ``t`` outside ``[1, min(k, n)]``, or
            ``2t <= min(k, n)``.
    """
    closed = min(k, n)
    if k < 1 or (k < n and k % 2 == 0):
        raise _refuse("threshold_is_majority", f"k={k} is not odd (or >= n={n})", state)
    if not 1 <= t <= closed:
        raise _refuse("threshold_is_majority", f"t={t} outside [1, {closed}]", state)
    if 2 * t <= closed:
        raise _refuse("threshold_is_majority", f"2t={2 * t} <= min(k, n)={closed}", state)


@lru_cache(maxsize=256)
def _floors(n: int, k: int, corrupt: float, bits: int) -> tuple[int, int | None]:
    try:
        k_min = find_params(n, corrupt, 0.0, bits).k
    except ValueError:
        k_min = n
    return k_min, min_threshold(n, k, corrupt, bits)


def params_meet_policy(n: int, k: int, t: int, policy: ClientPolicy, *, state: str) -> None:
    """``(k, t)`` is at least as strong as the finder's answer under the client's own policy.

    The finder runs for the announced ``n`` with the client's corruption rate and security bits
    (and no dropouts: tolerating dropouts is the server's concern, privacy is the client's).

    Raises:
        LocalProtocolError: ``k`` below the finder's ``k`` (unless the graph is complete), or
            ``t`` below the smallest private threshold for the announced ``k``.
    """
    k_min, t_min = _floors(n, k, policy.corrupt_fraction, policy.security_bits)
    if k < min(k_min, n):
        raise _refuse("params_meet_policy", f"k={k} < {k_min} for n={n}", state)
    if t_min is None or t < t_min:
        need = "no t" if t_min is None else f"t >= {t_min}"
        raise _refuse(
            "params_meet_policy",
            f"t={t} with k={k}, n={n}: privacy at {policy.corrupt_fraction:g} corrupt needs {need}",
            state,
        )


def check_round_params(n: int, k: int, t: int, policy: ClientPolicy, *, state: str) -> None:
    """All three rules, cheapest first.

    Raises:
        LocalProtocolError: ``PARAMS_REFUSED`` naming the first violated rule.
    """
    cohort_large_enough(n, policy, state=state)
    threshold_is_majority(n, k, t, state=state)
    params_meet_policy(n, k, t, policy, state=state)


def config_is_well_formed(
    what: str,
    participants: tuple[int, ...],
    dim: int,
    modulus_bits: int,
    signature_scheme: str,
    extra: list[tuple[bool, str]],
    *,
    state: str,
) -> None:
    """The checks every round or epoch configuration needs, then ``extra`` (problem, why) pairs.

    Raises:
        LocalProtocolError: ``PARAMS_REFUSED`` naming the first problem.
    """
    ids = participants
    problems = [
        (list(ids) != sorted(set(ids)) or any(u < 0 for u in ids), "participants unsorted"),
        (dim < 1, "dim must be positive"),
        (signature_scheme not in set(SignatureScheme), "unknown signature scheme"),
        *extra,
    ]
    try:
        ring_dtype(modulus_bits)
    except ValueError as exc:
        problems.append((True, str(exc)))
    for bad, why in problems:
        if bad:
            raise LocalProtocolError(
                f"unsound {what} configuration: {why}",
                state=state,
                reason=AbortReason.PARAMS_REFUSED,
                http_status=409,
            )
