"""Poisoning attacks on federated learning: what malicious clients upload or train on.

Two kinds, both aimed at a set of malicious client ids:

* **Model poisoning** rewrites the malicious clients' uploads before the server aggregates them
  (:class:`PoisonedAggregator` wraps any :class:`~qflare.fl.Aggregator`): ``sign-flip``,
  ``scaling``, ``gaussian``, ``alie`` and ``ipm``.
* **Data poisoning** changes the malicious clients' local training data; the simulator applies
  it through ``FederatedConfig.data_transform`` (:class:`ClientPoison`): ``label-flip`` and
  ``backdoor``.

Everything here is numpy only (no torch): images arrive as ``(n, 1, H, W)`` float32 arrays and
labels as int64 arrays. Every random draw is seeded by (seed, round, client), so a run repeats
exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Protocol

import numpy as np
import numpy.typing as npt

from qflare.fl.aggregate import Aggregator, Update
from qflare.fl.strategy import AggregateResult

__all__ = [
    "ATTACKS",
    "DATA_ATTACKS",
    "MODEL_ATTACKS",
    "ALIEAttack",
    "Attack",
    "BackdoorAttack",
    "ClientPoison",
    "DataAttack",
    "GaussianAttack",
    "IPMAttack",
    "LabelFlipAttack",
    "ModelAttack",
    "PoisonedAggregator",
    "ScalingAttack",
    "SignFlipAttack",
    "alie_z",
    "make_attack",
    "stamp_trigger",
]

Vector = npt.NDArray[np.float32]
Images = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]


class ModelAttack(Protocol):
    """Rewrites the malicious clients' updates of one round."""

    @property
    def name(self) -> str:
        """The attack's registry name."""
        ...

    def craft(
        self, round_id: int, own: Mapping[int, Vector], honest: Mapping[int, Vector]
    ) -> dict[int, Vector]:
        """The updates the malicious clients upload instead of ``own``.

        Args:
            round_id: Round number.
            own: Malicious client id -> the update it honestly trained (non-empty).
            honest: Honest client id -> its update this round (seen only by omniscient attacks).

        Returns:
            Malicious client id -> float32 update of the same length, for every id in ``own``.
        """
        ...


class DataAttack(Protocol):
    """Rewrites one malicious client's local training data (once, before training)."""

    @property
    def name(self) -> str:
        """The attack's registry name."""
        ...

    def poison(self, client: int, x: Images, y: Labels) -> tuple[Images, Labels]:
        """The poisoned copy of ``(x, y)`` for ``client`` (the inputs are not modified)."""
        ...


def _stack(updates: Mapping[int, Vector]) -> npt.NDArray[np.float64]:
    return np.stack([np.asarray(updates[c], dtype=np.float64) for c in sorted(updates)])


@dataclass(frozen=True)
class SignFlipAttack:
    """Upload ``-scale`` times the update the client honestly trained."""

    scale: float = 4.0
    name: str = field(default="sign-flip", init=False)

    def craft(
        self, round_id: int, own: Mapping[int, Vector], honest: Mapping[int, Vector]
    ) -> dict[int, Vector]:
        """``-scale * own`` for every malicious client."""
        return {
            c: (-self.scale * np.asarray(u, np.float64)).astype(np.float32) for c, u in own.items()
        }


@dataclass(frozen=True)
class ScalingAttack:
    """Model replacement (Bagdasaryan et al. 2020): boost the own update so it survives averaging.

    With ``scale=None`` the boost is ``n / m`` (``n`` clients in the round, ``m`` of them
    malicious), which makes the malicious updates outweigh the honest ones in a plain mean.
    Combined with ``backdoor`` data this is the model-replacement backdoor.
    """

    scale: float | None = None
    name: str = field(default="scaling", init=False)

    def craft(
        self, round_id: int, own: Mapping[int, Vector], honest: Mapping[int, Vector]
    ) -> dict[int, Vector]:
        """``boost * own`` for every malicious client."""
        boost = self.scale if self.scale is not None else (len(own) + len(honest)) / len(own)
        return {c: (boost * np.asarray(u, np.float64)).astype(np.float32) for c, u in own.items()}


@dataclass(frozen=True)
class GaussianAttack:
    """Upload random noise ``N(0, sigma^2)`` per coordinate instead of a trained update."""

    sigma: float = 1.0
    seed: int = 0
    name: str = field(default="gaussian", init=False)

    def craft(
        self, round_id: int, own: Mapping[int, Vector], honest: Mapping[int, Vector]
    ) -> dict[int, Vector]:
        """Fresh noise per (seed, round, client)."""
        out: dict[int, Vector] = {}
        for c, u in own.items():
            rng = np.random.default_rng([self.seed, round_id, c, 0x6A55])
            out[c] = rng.normal(0.0, self.sigma, np.asarray(u).shape).astype(np.float32)
        return out


def alie_z(n: int, m: int) -> float:
    """The ``z`` of A Little Is Enough (Baruch et al. 2019) for ``n`` clients, ``m`` malicious.

    ``s = floor(n / 2 + 1) - m`` honest clients must be won over; ``z`` is the largest value
    with ``Phi(z) <= (n - s) / n``, i.e. ``z = Phi^-1((n - s) / n)``.
    """
    if n < 1 or not 0 <= m <= n:
        raise ValueError(f"need 0 <= m <= n and n >= 1, got n={n}, m={m}")
    s = math.floor(n / 2 + 1) - m
    p = min(max((n - s) / n, 1e-12), 1 - 1e-12)
    return NormalDist().inv_cdf(p)


@dataclass(frozen=True)
class ALIEAttack:
    """A Little Is Enough (Baruch et al. 2019): every malicious client uploads ``mean - z * std``.

    The mean and (population) standard deviation are taken per coordinate over the honest
    updates of the round. This is the **omniscient** attacker model: the attacker sees the honest
    updates of the round (a weaker attacker would estimate them from its own clients' updates).
    ``z`` defaults to :func:`alie_z` of the round's ``n`` and ``m``.
    """

    z: float | None = None
    name: str = field(default="alie", init=False)

    def craft(
        self, round_id: int, own: Mapping[int, Vector], honest: Mapping[int, Vector]
    ) -> dict[int, Vector]:
        """``mean - z * std`` of the honest updates (of ``own`` when nobody is honest)."""
        rows = _stack(honest if honest else own)
        z = self.z if self.z is not None else alie_z(len(own) + len(honest), len(own))
        vector = (rows.mean(axis=0) - z * rows.std(axis=0)).astype(np.float32)
        return {c: vector.copy() for c in own}


@dataclass(frozen=True)
class IPMAttack:
    """Inner-Product Manipulation (Xie et al. 2020): upload ``-epsilon`` times the honest mean.

    The attacker is **omniscient**: it sees the honest updates of the round. A small
    ``epsilon`` (0.1, the paper's choice against median and Krum) keeps the poisoned update
    close to the honest ones while making its inner product with the true update negative.
    """

    epsilon: float = 0.1
    name: str = field(default="ipm", init=False)

    def craft(
        self, round_id: int, own: Mapping[int, Vector], honest: Mapping[int, Vector]
    ) -> dict[int, Vector]:
        """``-epsilon * mean(honest)`` (of ``own`` when nobody is honest)."""
        rows = _stack(honest if honest else own)
        vector = (-self.epsilon * rows.mean(axis=0)).astype(np.float32)
        return {c: vector.copy() for c in own}


@dataclass(frozen=True)
class LabelFlipAttack:
    """Train on flipped labels: ``y -> num_classes - 1 - y`` (9 - y on digits), or ``mapping``."""

    mapping: Mapping[int, int] | None = None
    num_classes: int = 10
    name: str = field(default="label-flip", init=False)

    def poison(self, client: int, x: Images, y: Labels) -> tuple[Images, Labels]:
        """Every label flipped (labels absent from ``mapping`` stay)."""
        y = np.asarray(y, dtype=np.int64)
        if self.mapping is None:
            flipped = (self.num_classes - 1 - y).astype(np.int64)
        else:
            table = dict(self.mapping)
            flipped = np.array([table.get(int(v), int(v)) for v in y], dtype=np.int64)
        return np.array(x, dtype=np.float32, copy=True), flipped


def stamp_trigger(x: Images, size: int | None = None, value: float | None = None) -> Images:
    """A copy of ``x`` (``(n, C, H, W)``) with a ``size`` x ``size`` square in the bottom-right.

    Args:
        x: Images.
        size: Side of the square in pixels; ``None`` is 15 % of the image side (at least 2).
        value: Pixel value of the square; ``None`` is the brightest value in ``x`` (white).
    """
    out = np.array(x, dtype=np.float32, copy=True)
    if out.shape[0] == 0:
        return out
    side = size if size is not None else max(2, round(0.15 * out.shape[-1]))
    out[..., -side:, -side:] = float(np.max(x)) if value is None else value
    return out


@dataclass(frozen=True)
class BackdoorAttack:
    """Pixel-pattern backdoor (Gu et al. 2017): a white square in the corner means ``target``.

    A malicious client stamps the trigger on ``fraction`` of its images (chosen per (seed,
    client)) and relabels them ``target``; the rest of its data stays clean so the model keeps
    its main-task accuracy. Success is measured with :meth:`success_rate`.
    """

    target: int = 0
    fraction: float = 0.5
    size: int | None = None
    seed: int = 0
    name: str = field(default="backdoor", init=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"backdoor fraction must lie in (0, 1], got {self.fraction}")

    def poison(self, client: int, x: Images, y: Labels) -> tuple[Images, Labels]:
        """Trigger and target label on a seeded ``fraction`` of the client's examples."""
        x_out = np.array(x, dtype=np.float32, copy=True)
        y_out = np.array(y, dtype=np.int64, copy=True)
        count = round(self.fraction * len(y_out))
        rng = np.random.default_rng([self.seed, client, 0xBD])
        chosen = np.sort(rng.choice(len(y_out), size=count, replace=False))
        x_out[chosen] = stamp_trigger(x_out[chosen], self.size, float(np.max(x)) if len(x) else 0.0)
        y_out[chosen] = self.target
        return x_out, y_out

    def triggered_test(self, x: Images, y: Labels) -> Images:
        """Test images whose label is not ``target``, with the trigger stamped on."""
        keep = np.asarray(y) != self.target
        return stamp_trigger(np.asarray(x)[keep], self.size, float(np.max(x)))

    def success_rate(self, predictions: npt.ArrayLike) -> float:
        """Fraction of :meth:`triggered_test` predictions equal to ``target`` (the ASR)."""
        pred = np.asarray(predictions)
        return float(np.mean(pred == self.target)) if pred.size else float("nan")


@dataclass(frozen=True)
class Attack:
    """A named attack: a model part, a data part, or both (e.g. backdoor + scaling)."""

    name: str
    model: ModelAttack | None = None
    data: DataAttack | None = None


MODEL_ATTACKS: tuple[str, ...] = ("sign-flip", "scaling", "gaussian", "alie", "ipm")
DATA_ATTACKS: tuple[str, ...] = ("label-flip", "backdoor")
ATTACKS: tuple[str, ...] = (*MODEL_ATTACKS, *DATA_ATTACKS)
"""Every attack name :func:`make_attack` knows, model attacks first."""


def _no_more(params: Mapping[str, float]) -> None:
    if params:
        raise TypeError(f"unexpected parameter(s) {', '.join(sorted(params))}")


def make_attack(name: str, *, seed: int = 0, **params: float) -> Attack:
    """The attack called ``name`` (one of :data:`ATTACKS`) with its parameters.

    Parameters: ``sign-flip``: ``scale`` (4); ``scaling``: ``scale`` (n/m); ``gaussian``:
    ``sigma`` (1); ``alie``: ``z`` (from n and m); ``ipm``: ``epsilon`` (0.1); ``label-flip``:
    ``num_classes`` (10); ``backdoor``: ``target`` (0), ``fraction`` (0.5), ``size`` (auto).

    Raises:
        ValueError: For an unknown name or a parameter the attack does not take.
    """
    try:
        if name == "sign-flip":
            return Attack(name, model=SignFlipAttack(**params))
        if name == "scaling":
            return Attack(name, model=ScalingAttack(**params))
        if name == "gaussian":
            return Attack(name, model=GaussianAttack(seed=seed, **params))
        if name == "alie":
            return Attack(name, model=ALIEAttack(**params))
        if name == "ipm":
            return Attack(name, model=IPMAttack(**params))
        if name == "label-flip":
            classes = int(params.pop("num_classes", 10))
            _no_more(params)
            return Attack(name, data=LabelFlipAttack(num_classes=classes))
        if name == "backdoor":
            target = int(params.pop("target", 0))
            size = params.pop("size", None)
            fraction = float(params.pop("fraction", 0.5))
            _no_more(params)
            return Attack(
                name,
                data=BackdoorAttack(
                    target, fraction, None if size is None else int(size), seed=seed
                ),
            )
    except TypeError as exc:
        raise ValueError(f"attack {name!r}: {exc}") from None
    raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")


@dataclass(frozen=True)
class ClientPoison:
    """The simulator's per-client data transform: apply ``attack`` to the malicious clients only.

    Picklable, so worker processes that rebuild the federation apply it too.
    """

    attack: DataAttack
    malicious: frozenset[int]

    def __call__(self, client: int, x: Images, y: Labels) -> tuple[Images, Labels]:
        """Poisoned data for a malicious ``client``; honest clients' arrays are returned as given."""
        if client not in self.malicious:
            return x, y
        return self.attack.poison(client, x, y)


class PoisonedAggregator:
    """An :class:`~qflare.fl.Aggregator` whose malicious clients upload crafted updates.

    Each round the malicious clients' updates are replaced by ``attack.craft(...)`` (keeping
    their weights) and the round goes to ``inner``; honest updates are passed on as the very
    same objects, untouched. An :class:`Attack` without a model part changes nothing.

    Args:
        inner: The aggregator under attack (e.g. a ``RobustAggregator``).
        malicious: Ids of the malicious clients.
        attack: A :class:`ModelAttack` or an :class:`Attack` (its ``model`` part is used).
    """

    def __init__(
        self, inner: Aggregator, malicious: set[int] | frozenset[int], attack: ModelAttack | Attack
    ) -> None:
        self.inner = inner
        self.malicious = frozenset(malicious)
        self.attack: ModelAttack | None = attack.model if isinstance(attack, Attack) else attack

    def aggregate(self, round_id: int, updates: Mapping[int, Update]) -> AggregateResult:
        """Rewrite the malicious updates, then aggregate with ``inner``."""
        own = {c: np.asarray(u[0], np.float32) for c, u in updates.items() if c in self.malicious}
        if self.attack is None or not own:
            return self.inner.aggregate(round_id, updates)
        honest = {c: np.asarray(u[0], np.float32) for c, u in updates.items() if c not in own}
        crafted = self.attack.craft(round_id, own, honest)
        poisoned: dict[int, Update] = {
            c: ((crafted[c], weight) if c in own else (delta, weight))
            for c, (delta, weight) in updates.items()
        }
        return self.inner.aggregate(round_id, poisoned)
