"""AES-256-GCM with mandatory associated data and explicit sequence-number nonces."""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qflare.crypto.errors import DecryptionError, KeyFormatError
from qflare.crypto.secret import NoPickle, SecretBytes

AEAD_KEY_BYTES = 32
AEAD_TAG_BYTES = 16
_MAX_SEQUENCE = 2**96 - 1


class Aead(NoPickle):
    """AES-256-GCM bound to a caller-chosen context.

    Nonces are sequence numbers: a key must never see the same ``sequence`` twice. Keys in
    QFLARE are derived per (session, round, sender, recipient, purpose), so most are used once.

    Args:
        key: A 32-byte key.
    """

    __slots__ = ("_aead",)

    def __init__(self, key: SecretBytes) -> None:
        if len(key) != AEAD_KEY_BYTES:
            raise KeyFormatError("AES-256-GCM key must be 32 bytes")
        self._aead = AESGCM(key.reveal())

    @staticmethod
    def _nonce(sequence: int) -> bytes:
        if not 0 <= sequence <= _MAX_SEQUENCE:
            raise ValueError("sequence number out of range")
        return sequence.to_bytes(12, "big")

    def seal(self, plaintext: bytes, *, aad: bytes, sequence: int) -> bytes:
        """Encrypt and authenticate ``plaintext``, binding ``aad``."""
        return self._aead.encrypt(self._nonce(sequence), plaintext, aad)

    def open(self, ciphertext: bytes, *, aad: bytes, sequence: int) -> bytes:
        """Decrypt ``ciphertext``.

        Raises:
            DecryptionError: tampered ciphertext, wrong key, ``aad`` or ``sequence``.
        """
        try:
            return self._aead.decrypt(self._nonce(sequence), ciphertext, aad)
        except InvalidTag as exc:
            raise DecryptionError("AEAD authentication failed") from exc

    def __repr__(self) -> str:
        return "Aead(<redacted key>)"
