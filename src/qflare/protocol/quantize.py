"""Fixed-point quantisation into Z_{2^b} with clipping, stochastic rounding and integer weights.

A client with update ``x`` (floats) and integer weight ``w`` (its example count) uploads the ring
vector ``[w·q(x), w]`` where ``q`` clips to ``[-clip, clip]`` and rounds stochastically (unbiased)
to ``value_bits`` bits. The modular sum of those vectors is exact as long as
``Σ w ≤ max_total_weight``, which sets the headroom: ``value_bits = b - 1 - ceil(log2 W)``.
Dequantising the sum gives ``Σ w·x`` (up to rounding) and ``Σ w`` exactly.

Each weight alone fitting is not enough: the *sum* must fit. A client of a cohort of ``n``
therefore caps its weight at ``W // n`` (:func:`weight_cap`), and :func:`dequantize` refuses a
sum whose total weight exceeds ``W`` (:class:`RingOverflowError`) instead of returning wrapped values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from qflare.crypto import RingVector, Rng, ring_dtype

_SIGNED = {32: np.int32, 64: np.int64}
MIN_VALUE_BITS = 8


@dataclass(frozen=True, slots=True)
class QuantConfig:
    """Public quantisation parameters of a federation.

    Attributes:
        clip: Each coordinate is clipped to ``[-clip, clip]``.
        modulus_bits: Ring size exponent, 32 or 64.
        max_total_weight: Upper bound on the summed client weights (headroom for the sum).
    """

    clip: float = 1.0
    modulus_bits: int = 32
    max_total_weight: int = 1

    def __post_init__(self) -> None:
        ring_dtype(self.modulus_bits)
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError("clip must be positive and finite")
        if self.max_total_weight < 1:
            raise ValueError("max_total_weight must be at least 1")
        if self.value_bits < MIN_VALUE_BITS:
            raise ValueError(
                f"only {self.value_bits} bits left per value: raise modulus_bits to 64 or lower"
                " max_total_weight"
            )

    @property
    def headroom_bits(self) -> int:
        """Bits reserved so that the weighted sum cannot wrap."""
        return math.ceil(math.log2(self.max_total_weight)) if self.max_total_weight > 1 else 0

    @property
    def value_bits(self) -> int:
        """Bits of precision per quantised value (sign excluded)."""
        return self.modulus_bits - 1 - self.headroom_bits

    @property
    def scale(self) -> float:
        """Quantisation step inverse: ``q = round(x * scale)``."""
        return float(2**self.value_bits - 1) / self.clip

    def ring_dim(self, dim: int) -> int:
        """Length of the uploaded ring vector for a model of ``dim`` parameters."""
        return dim + 1


class RingOverflowError(ValueError):
    """A summed ring vector's total weight exceeds the headroom: its values may have wrapped."""


def weight_cap(cfg: QuantConfig, clients: int) -> int:
    """Largest weight each of ``clients`` may upload so that their sum fits ``max_total_weight``.

    Raises:
        ValueError: fewer than one unit of weight per client (the headroom is too small).
    """
    if clients < 1:
        raise ValueError("a cohort has at least one client")
    cap = cfg.max_total_weight // clients
    if cap < 1:
        raise ValueError(
            f"max_total_weight {cfg.max_total_weight} leaves no weight for {clients} clients"
        )
    return cap


def stochastic_round(values: npt.NDArray[np.float64], rng: Rng) -> npt.NDArray[np.int64]:
    """Round to integers so that ``E[round(v)] = v`` (unbiased)."""
    gen = np.random.Generator(np.random.PCG64(int.from_bytes(rng.random_bytes(16), "big")))
    floor = np.floor(values)
    bump = gen.random(values.shape) < (values - floor)
    return (floor + bump).astype(np.int64)


def quantize(update: npt.NDArray[Any], weight: int, cfg: QuantConfig, rng: Rng) -> RingVector:
    """Encode ``weight · update`` plus the weight itself as a ring vector of length ``d + 1``.

    Callers in a cohort of ``n`` keep ``weight <= weight_cap(cfg, n)`` so that the sum fits.

    Raises:
        ValueError: non-finite values, or a weight outside ``[0, max_total_weight]``.
    """
    if not 0 <= weight <= cfg.max_total_weight:
        raise ValueError(f"weight {weight} outside [0, {cfg.max_total_weight}]")
    x = np.asarray(update, dtype=np.float64).ravel()
    if not np.all(np.isfinite(x)):
        raise ValueError("update contains NaN or infinity")
    q = stochastic_round(np.clip(x, -cfg.clip, cfg.clip) * cfg.scale, rng)
    out = np.empty(x.size + 1, dtype=ring_dtype(cfg.modulus_bits))
    out[:-1] = (q * weight).astype(out.dtype)  # two's complement wrap is the ring embedding
    out[-1] = weight
    return out


def dequantize(
    total: RingVector, cfg: QuantConfig, *, strict: bool = True
) -> tuple[npt.NDArray[np.float64], int]:
    """Decode a summed ring vector into ``(Σ w·x, Σ w)``.

    Args:
        total: The modular sum.
        cfg: The quantisation it was made with.
        strict: Refuse a total weight above ``max_total_weight`` (off only to read garbage on
            purpose, as the attack harness does with a masked upload).

    Raises:
        RingOverflowError: ``strict`` and the total weight exceeds the headroom.
    """
    weight = int(total[-1])
    if strict and weight > cfg.max_total_weight:
        raise RingOverflowError(
            f"total weight {weight} exceeds max_total_weight {cfg.max_total_weight}: "
            "the sum may have wrapped"
        )
    signed = total[:-1].view(_SIGNED[cfg.modulus_bits]).astype(np.float64)
    return signed / cfg.scale, weight
