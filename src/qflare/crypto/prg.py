"""Mask PRG: AES-CTR keystream expanded straight into ring vectors (Z_{2^32} or Z_{2^64}).

Masks are added to or subtracted from an accumulator *in place*; the ring's wrap-around is the
machine integer's overflow, so no modular reduction is ever computed. One scratch buffer per
(dimension, dtype) is reused for every mask, so expanding ``m`` masks of ``d`` elements allocates
nothing after the first call.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from qflare.crypto.secret import SecretBytes

_ZERO_IV = b"\0" * 16
_BLOCK = 16
RingVector = npt.NDArray[np.unsignedinteger[Any]]


def ring_dtype(modulus_bits: int) -> np.dtype[np.unsignedinteger[Any]]:
    """Return the numpy dtype whose overflow implements arithmetic modulo ``2**modulus_bits``."""
    if modulus_bits == 32:
        return np.dtype(np.uint32)
    if modulus_bits == 64:
        return np.dtype(np.uint64)
    raise ValueError(f"modulus must be 2^32 or 2^64, got 2^{modulus_bits}")


class MaskPrg:
    """Expands 128- or 256-bit seeds into pseudorandom ring vectors with AES-CTR.

    Each seed must be used for exactly one mask (seeds are derived per pair, purpose and round),
    which is why the counter block starts at zero.

    Args:
        dim: Vector length.
        modulus_bits: 32 or 64.
    """

    def __init__(self, dim: int, modulus_bits: int = 32) -> None:
        if dim <= 0:
            raise ValueError("dim must be positive")
        self.dim = dim
        self.dtype = ring_dtype(modulus_bits)
        self.nbytes = dim * self.dtype.itemsize
        self._zeros = memoryview(bytearray(self.nbytes))
        # update_into needs len(out) >= len(in) + block_size - 1.
        self._raw = bytearray(self.nbytes + _BLOCK)
        self._out = memoryview(self._raw)
        self._scratch: RingVector = np.frombuffer(self._raw, dtype=self.dtype, count=dim)

    def _keystream(self, seed: SecretBytes) -> RingVector:
        key = seed.reveal()
        if len(key) not in (16, 32):
            raise ValueError("mask seeds must be 16 or 32 bytes")
        enc = Cipher(algorithms.AES(key), modes.CTR(_ZERO_IV)).encryptor()
        enc.update_into(self._zeros, self._out)
        return self._scratch

    def expand(self, seed: SecretBytes) -> RingVector:
        """Return a fresh vector holding the mask for ``seed``."""
        return self._keystream(seed).copy()

    def add_into(self, acc: RingVector, seed: SecretBytes) -> None:
        """``acc += PRG(seed)`` modulo the ring, in place."""
        np.add(acc, self._keystream(seed), out=acc)

    def sub_into(self, acc: RingVector, seed: SecretBytes) -> None:
        """``acc -= PRG(seed)`` modulo the ring, in place."""
        np.subtract(acc, self._keystream(seed), out=acc)

    def apply(self, acc: RingVector, seed: SecretBytes, sign: int) -> None:
        """Add (``sign=+1``) or subtract (``sign=-1``) the mask of ``seed``."""
        if sign > 0:
            self.add_into(acc, seed)
        else:
            self.sub_into(acc, seed)

    def zeros(self) -> RingVector:
        """A new all-zero accumulator of this PRG's shape and ring."""
        return np.zeros(self.dim, dtype=self.dtype)
