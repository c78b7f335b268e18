"""Server strategies that see only what secure aggregation reveals.

A strategy never sees an individual update: each round it receives an
:class:`AggregateResult` holding ``sum_i w_i * delta_i`` and ``sum_i w_i`` over the clients
that survived, where ``delta_i`` is client ``i``'s new weights minus the global weights and
``w_i`` its number of training examples. From the weighted mean delta it moves the global
model:

* FedAvg: ``x <- x + eta * delta`` (``eta = 1`` is McMahan et al.'s FedAvg).
* FedAdagrad / FedAdam / FedYogi: Algorithm 2 of Reddi et al., "Adaptive Federated
  Optimization", ICLR 2021, treating ``delta`` as a pseudo-gradient::

      m <- beta1 * m + (1 - beta1) * delta
      v <- v + delta^2                                          (Adagrad)
      v <- beta2 * v + (1 - beta2) * delta^2                    (Adam)
      v <- v - (1 - beta2) * delta^2 * sign(v - delta^2)        (Yogi)
      x <- x + eta * m / (sqrt(v) + tau)

  with ``m_0 = 0`` and ``v_0 = tau^2`` (the paper requires ``v_{-1} >= tau^2``) and, as in
  the paper, no bias correction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # models imports torch; robust aggregation (numpy only) imports this module
    from qflare.fl.models import FlatVector

__all__ = [
    "STRATEGY_NAMES",
    "AggregateResult",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedYogi",
    "Strategy",
    "build_strategy",
    "sample_clients",
]

Float64Vector = npt.NDArray[np.float64]
STRATEGY_NAMES: tuple[str, ...] = ("fedavg", "fedadagrad", "fedadam", "fedyogi")


@dataclass(frozen=True)
class AggregateResult:
    """What secure aggregation reveals about one round.

    Attributes:
        weighted_sum: ``sum_i w_i * delta_i`` as a float64 flat vector.
        total_weight: ``sum_i w_i`` over the surviving clients.
        num_clients: How many clients the sums cover (0 if all dropped).
    """

    weighted_sum: Float64Vector
    total_weight: float
    num_clients: int

    @property
    def empty(self) -> bool:
        """True when no client (or no weight) contributed."""
        return self.num_clients == 0 or self.total_weight <= 0

    def mean(self) -> Float64Vector:
        """The weighted mean delta ``weighted_sum / total_weight``.

        Raises:
            ValueError: If the result is empty.
        """
        if self.empty:
            raise ValueError("no client contributed to this aggregate")
        return np.asarray(self.weighted_sum, dtype=np.float64) / float(self.total_weight)


class Strategy(Protocol):
    """Turns an aggregate of deltas into the next global model."""

    @property
    def name(self) -> str:
        """Registry name, e.g. ``"fedavg"``."""
        ...

    def initialize(self, global_flat: FlatVector) -> None:
        """Reset the server state for a model of this size."""
        ...

    def apply(self, global_flat: FlatVector, result: AggregateResult) -> FlatVector:
        """Return the next global model (a new array; inputs are not modified)."""
        ...


class FedAvg:
    """Weighted federated averaging with an optional server learning rate.

    Args:
        eta: Server learning rate; 1.0 replaces the model by the weighted client average.
    """

    name = "fedavg"

    def __init__(self, eta: float = 1.0) -> None:
        if eta <= 0:
            raise ValueError(f"eta must be > 0, got {eta}")
        self.eta = eta

    def initialize(self, global_flat: FlatVector) -> None:
        """FedAvg keeps no state; present for the :class:`Strategy` protocol."""

    def apply(self, global_flat: FlatVector, result: AggregateResult) -> FlatVector:
        """Return ``global + eta * weighted_mean(delta)``; unchanged if nobody contributed."""
        if result.empty:
            return np.array(global_flat, dtype=np.float32, copy=True)
        step = self.eta * result.mean()
        return (np.asarray(global_flat, dtype=np.float64) + step).astype(np.float32)


class _AdaptiveServer(ABC):
    """Shared first/second-moment machinery of Reddi et al.'s adaptive server optimisers."""

    name = "adaptive"

    def __init__(
        self, eta: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        if eta <= 0 or tau <= 0:
            raise ValueError(f"eta and tau must be > 0, got eta={eta}, tau={tau}")
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {beta1}, {beta2}")
        self.eta, self.beta1, self.beta2, self.tau = eta, beta1, beta2, tau
        self.m: Float64Vector | None = None
        self.v: Float64Vector | None = None

    def initialize(self, global_flat: FlatVector) -> None:
        """Set ``m = 0`` and ``v = tau^2`` for a model of ``global_flat``'s size."""
        size = int(np.asarray(global_flat).shape[0])
        self.m = np.zeros(size, dtype=np.float64)
        self.v = np.full(size, self.tau**2, dtype=np.float64)

    def apply(self, global_flat: FlatVector, result: AggregateResult) -> FlatVector:
        """Update the moments with the mean delta and take one adaptive step.

        The state is initialised lazily if :meth:`initialize` was not called. An empty
        aggregate leaves both the model and the moments unchanged.
        """
        if result.empty:
            return np.array(global_flat, dtype=np.float32, copy=True)
        if self.m is None or self.v is None or self.m.shape[0] != global_flat.shape[0]:
            self.initialize(global_flat)
        assert self.m is not None and self.v is not None
        delta = result.mean()
        self.m = self.beta1 * self.m + (1.0 - self.beta1) * delta
        self.v = self._second_moment(self.v, delta * delta)
        step = self.eta * self.m / (np.sqrt(self.v) + self.tau)
        return (np.asarray(global_flat, dtype=np.float64) + step).astype(np.float32)

    @abstractmethod
    def _second_moment(self, v: Float64Vector, delta_sq: Float64Vector) -> Float64Vector:
        """Return the next second-moment estimate."""


class FedAdagrad(_AdaptiveServer):
    """Server Adagrad: ``v <- v + delta^2``."""

    name = "fedadagrad"

    def _second_moment(self, v: Float64Vector, delta_sq: Float64Vector) -> Float64Vector:
        return v + delta_sq


class FedAdam(_AdaptiveServer):
    """Server Adam: ``v <- beta2 * v + (1 - beta2) * delta^2``."""

    name = "fedadam"

    def _second_moment(self, v: Float64Vector, delta_sq: Float64Vector) -> Float64Vector:
        return self.beta2 * v + (1.0 - self.beta2) * delta_sq


class FedYogi(_AdaptiveServer):
    """Server Yogi: ``v <- v - (1 - beta2) * delta^2 * sign(v - delta^2)``."""

    name = "fedyogi"

    def _second_moment(self, v: Float64Vector, delta_sq: Float64Vector) -> Float64Vector:
        return v - (1.0 - self.beta2) * delta_sq * np.sign(v - delta_sq)


def build_strategy(name: str, params: Mapping[str, float] | None = None) -> Strategy:
    """Construct a strategy by name.

    Args:
        name: ``"fedavg"``, ``"fedadagrad"``, ``"fedadam"`` or ``"fedyogi"``.
        params: Keyword parameters: ``eta`` for all; ``beta1``, ``beta2``, ``tau`` for the
            adaptive ones.

    Returns:
        The strategy (uninitialised).

    Raises:
        ValueError: On an unknown name or parameter.
    """
    kwargs = {key: float(value) for key, value in (params or {}).items()}
    key = name.strip().lower()
    allowed = {"eta"} if key == "fedavg" else {"eta", "beta1", "beta2", "tau"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(f"{name} takes {sorted(allowed)}, not {sorted(unknown)}")
    if key == "fedavg":
        return FedAvg(**kwargs)
    if key == "fedadagrad":
        return FedAdagrad(**kwargs)
    if key == "fedadam":
        return FedAdam(**kwargs)
    if key == "fedyogi":
        return FedYogi(**kwargs)
    raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGY_NAMES)}")


def sample_clients(
    num_clients: int, fraction: float, rng: np.random.Generator, *, min_clients: int = 1
) -> list[int]:
    """Sample ``max(min_clients, round(fraction * num_clients))`` client ids without replacement.

    Args:
        num_clients: Population size; ids are ``0 .. num_clients - 1``.
        fraction: Fraction of the population to sample, in ``(0, 1]``.
        rng: Seeded generator (advanced by the call).
        min_clients: Lower bound on the sample size (capped at ``num_clients``).

    Returns:
        The sampled ids in increasing order.

    Raises:
        ValueError: If ``fraction`` is outside ``(0, 1]``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    count = min(num_clients, max(min_clients, round(fraction * num_clients)))
    if count >= num_clients:
        return list(range(num_clients))
    chosen = rng.choice(num_clients, size=count, replace=False)
    return sorted(int(c) for c in chosen)
