"""Injected randomness. Protocol code receives an :class:`Rng`; it never calls ``os.urandom``."""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


@runtime_checkable
class Rng(Protocol):
    """Source of cryptographically strong random bytes."""

    def random_bytes(self, n: int) -> bytes:
        """Return ``n`` random bytes."""
        ...


class SystemRng:
    """The operating system's CSPRNG (``os.urandom``)."""

    def random_bytes(self, n: int) -> bytes:
        """Return ``n`` bytes from the OS CSPRNG."""
        return os.urandom(n)


class DeterministicRng:
    """AES-256-CTR DRBG from a seed, for reproducible tests and simulations only.

    Args:
        seed: Any bytes; expanded with SHA-256-free padding to a 32-byte AES key.
    """

    def __init__(self, seed: bytes | int) -> None:
        raw = seed.to_bytes(32, "big", signed=False) if isinstance(seed, int) else bytes(seed)
        key = raw.ljust(32, b"\0")[:32]
        self._enc = Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()

    def random_bytes(self, n: int) -> bytes:
        """Return the next ``n`` keystream bytes."""
        return self._enc.update(b"\0" * n)

    def __repr__(self) -> str:
        return "DeterministicRng(<seeded>)"
