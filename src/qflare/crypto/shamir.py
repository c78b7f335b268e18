"""Shamir t-of-n secret sharing of 32-byte secrets over GF(2^256 + 297).

Share holders are identified by positive integers (the evaluation points). Lagrange
coefficients at zero are cached per holder set, so reconstructing many secrets from the same
survivors costs ``t`` multiplications each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

from qflare.crypto.errors import ShamirError
from qflare.crypto.rng import Rng
from qflare.crypto.secret import SecretBytes

PRIME = 2**256 + 297
"""The smallest prime above 2^256: every 32-byte secret is a field element."""
SECRET_BYTES = 32
SHARE_BYTES = 33


@lru_cache(maxsize=4096)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange basis coefficients at ``x=0`` for the evaluation points ``xs`` (cached).

    ``l_i(0) = prod_{j != i} x_j / (x_j - x_i)``; all denominators are inverted with one modular
    inversion (Montgomery's batch trick).
    """
    total = 1
    for x in xs:
        total = total * x % PRIME
    nums, dens = [], []
    for i, xi in enumerate(xs):
        den = xi
        for j, xj in enumerate(xs):
            if i != j:
                den = den * (xj - xi) % PRIME
        nums.append(total)
        dens.append(den)  # l_i(0) = total / (x_i * prod_{j!=i}(x_j - x_i))
    prefix = [1]
    for d in dens:
        prefix.append(prefix[-1] * d % PRIME)
    inv = pow(prefix[-1], -1, PRIME)
    coeffs = [0] * len(xs)
    for i in range(len(xs) - 1, -1, -1):
        coeffs[i] = nums[i] * inv * prefix[i] % PRIME
        inv = inv * dens[i] % PRIME
    return tuple(coeffs)


class Shamir:
    """Threshold sharing with threshold ``t`` (``t`` shares reconstruct; ``t-1`` reveal nothing).

    Args:
        threshold: Number of shares needed to reconstruct.
    """

    def __init__(self, threshold: int) -> None:
        if threshold < 1:
            raise ShamirError("threshold must be at least 1")
        self.threshold = threshold

    def split(self, secret: SecretBytes, holders: Sequence[int], rng: Rng) -> dict[int, bytes]:
        """Split ``secret`` into one share per holder id.

        Raises:
            ShamirError: fewer holders than the threshold, duplicate or non-positive ids.
        """
        if len(secret) != SECRET_BYTES:
            raise ShamirError("secrets must be 32 bytes")
        if len(set(holders)) != len(holders) or any(h <= 0 or h >= PRIME for h in holders):
            raise ShamirError("holder ids must be distinct positive field elements")
        if len(holders) < self.threshold:
            raise ShamirError(f"{len(holders)} holders cannot meet threshold {self.threshold}")
        coeffs = [int.from_bytes(secret.reveal(), "big")]
        coeffs += [
            int.from_bytes(rng.random_bytes(40), "big") % PRIME for _ in range(self.threshold - 1)
        ]
        shares = {}
        for x in holders:
            acc = 0
            for c in reversed(coeffs):
                acc = (acc * x + c) % PRIME
            shares[x] = acc.to_bytes(SHARE_BYTES, "big")
        return shares

    def combine(self, shares: Mapping[int, bytes]) -> SecretBytes:
        """Reconstruct the secret from at least ``threshold`` shares (extra ones are ignored).

        Raises:
            ShamirError: fewer than ``threshold`` shares, or a malformed share.
        """
        if len(shares) < self.threshold:
            raise ShamirError(f"need {self.threshold} shares, got {len(shares)}")
        xs = tuple(sorted(shares)[: self.threshold])
        if any(x <= 0 for x in xs):
            raise ShamirError("holder ids must be positive")
        acc = 0
        for x, coeff in zip(xs, lagrange_at_zero(xs), strict=True):
            share = shares[x]
            if len(share) != SHARE_BYTES:
                raise ShamirError("malformed share")
            y = int.from_bytes(share, "big")
            if y >= PRIME:
                raise ShamirError("share is not a field element")
            acc = (acc + coeff * y) % PRIME
        if acc >= 2 ** (8 * SECRET_BYTES):
            raise ShamirError("reconstruction is not a 32-byte secret (inconsistent shares)")
        return SecretBytes(acc.to_bytes(SECRET_BYTES, "big"))
