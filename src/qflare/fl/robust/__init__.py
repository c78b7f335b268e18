"""Robust aggregation: rules that see every update and refuse or dampen poisoned ones.

Masking protocols (SecAgg, SecAgg+, CHRONOS) reveal only the sum, so no rule here can run on
their output; these rules are for aggregation that sees individual updates: inside an attested
server enclave, or in the simulator for study. numpy only (no torch), so an enclave can load it.

A :class:`Defence` takes the round's updates as one ``(n, d)`` matrix of float32 deltas, their
weights (examples trained on) and an optional reference direction, and returns the aggregated
mean delta and which rows it used.

Common behaviour of every rule:

* Input checks raise :class:`ValueError` (wrong shapes, non-real dtype, bad weights, a
  non-finite or mis-sized reference).
* A row holding NaN or infinity is never used and is reported as not accepted; it is not an
  error (one broken or hostile client must not stop the round).
* If a rule accepts nothing (every row invalid, or every row refused by a filter) it returns a
  zero mean with an all-false ``accepted``; :class:`RobustAggregator` reports that as an empty
  round, which every strategy in :mod:`qflare.fl.strategy` applies as "model unchanged".
* Deterministic: no randomness; ties go to the lower row index.
* Memory: the matrix is read in column blocks; no full float64 copy is made.

Rules (:data:`DEFENCES`): ``fedavg`` (no defence), ``cosine`` (QFLARE's direction filter),
``norm-clip``, ``median``, ``trimmed-mean``, ``krum``, ``multi-krum``, ``centred-clip``,
``fltrust``; see each class for its paper and parameters.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from qflare.fl.robust._base import Defence, RobustResult
from qflare.fl.robust.aggregator import RobustAggregator
from qflare.fl.robust.centred import CentredClipDefence
from qflare.fl.robust.coordinate import MedianDefence, TrimmedMeanDefence
from qflare.fl.robust.direction import (
    CosineDefence,
    FedAvgDefence,
    FLTrustDefence,
    NormClipDefence,
)
from qflare.fl.robust.krum import KrumDefence, MultiKrumDefence

__all__ = [
    "DEFENCES",
    "CentredClipDefence",
    "CosineDefence",
    "Defence",
    "FLTrustDefence",
    "FedAvgDefence",
    "KrumDefence",
    "MedianDefence",
    "MultiKrumDefence",
    "NormClipDefence",
    "RobustAggregator",
    "RobustResult",
    "TrimmedMeanDefence",
    "make_defence",
]

_MAKERS: dict[str, Callable[..., Defence]] = {
    "fedavg": FedAvgDefence,
    "cosine": CosineDefence,
    "norm-clip": NormClipDefence,
    "median": MedianDefence,
    "trimmed-mean": TrimmedMeanDefence,
    "krum": KrumDefence,
    "multi-krum": MultiKrumDefence,
    "centred-clip": CentredClipDefence,
    "fltrust": FLTrustDefence,
}
DEFENCES: tuple[str, ...] = tuple(_MAKERS)


def make_defence(name: str, **params: float) -> Defence:
    """The defence called ``name`` (one of :data:`DEFENCES`) with its parameters.

    Parameters: ``cosine``: ``threshold``; ``norm-clip``: ``max_norm``; ``trimmed-mean``:
    ``beta`` or ``f``; ``krum``: ``f``; ``multi-krum``: ``f``, ``m``; ``centred-clip``: ``tau``,
    ``iterations``; ``fedavg``, ``median`` and ``fltrust`` take none.

    Raises:
        ValueError: For an unknown name, a parameter the defence does not take, or a bad value.
    """
    try:
        maker = _MAKERS[name]
    except KeyError:
        raise ValueError(f"unknown defence {name!r}; choose from {', '.join(DEFENCES)}") from None
    unknown = sorted(set(params) - set(inspect.signature(maker).parameters))
    if unknown:
        raise ValueError(
            f"defence {name!r} does not take {', '.join(unknown)} "
            "(see make_defence for its parameters)"
        )
    try:
        return maker(**params)
    except TypeError as exc:  # a value of the wrong type, e.g. a string
        raise ValueError(f"defence {name!r}: bad parameter value ({exc})") from None
