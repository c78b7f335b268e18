"""Secret holders: redacted ``repr``, no pickling, explicit ``reveal()``."""

from __future__ import annotations

import hmac
from typing import NoReturn


class NoPickle:
    """Mixin that makes an object refuse to be pickled or copied by ``copy.copy``."""

    __slots__ = ()

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds secret material and cannot be pickled")

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds secret material and cannot be pickled")

    def __getstate__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds secret material and cannot be pickled")


class SecretBytes(NoPickle):
    """Bytes that must not leak into logs, reprs or pickles.

    Args:
        value: The secret bytes.
    """

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = bytes(value)

    def reveal(self) -> bytes:
        """Return the raw secret. Call sites are easy to audit with ``grep reveal``."""
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return f"SecretBytes(<redacted {len(self._value)} bytes>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretBytes):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        raise TypeError("SecretBytes is not hashable")
