"""Exceptions raised by :mod:`qflare.crypto`. Checks raise; they never return ``False``."""


class CryptoError(Exception):
    """Base class of every cryptographic failure."""


class InvalidSignature(CryptoError):  # noqa: N818 - named like pyca/cryptography's exception
    """A signature did not verify for the given key, message and context."""


class DecryptionError(CryptoError):
    """An AEAD ciphertext failed authentication (tampered, wrong key or wrong context)."""


class ShamirError(CryptoError):
    """Secret sharing misuse: too few shares, duplicate holders, or malformed shares."""


class KeyFormatError(CryptoError):
    """A public or private key has the wrong length or encoding."""
