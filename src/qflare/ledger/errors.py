"""Exceptions raised by :mod:`qflare.ledger`. Every check raises; none returns ``False``."""

from __future__ import annotations


class LedgerError(Exception):
    """Base class of every ledger failure."""


class InvalidEntry(LedgerError, ValueError):  # noqa: N818 - a verdict, like InvalidSignature
    """An entry is malformed: bad kind, actor, payload value, timestamp, or encoding.

    A ``ValueError`` too, so ``msgspec`` reports it as a validation error while decoding.
    """


class LedgerTampered(LedgerError):  # noqa: N818 - names what was found, not a failure mode
    """The stored history differs from what was written.

    Attributes:
        index: Position of the first entry at which the inconsistency is observed, or ``None``
            when it concerns the history as a whole (e.g. a signed root that does not match).
        reason: Human-readable description of what did not match.
    """

    def __init__(self, index: int | None, reason: str) -> None:
        self.index = index
        self.reason = reason
        where = "ledger" if index is None else f"entry {index}"
        super().__init__(f"{where}: {reason}")


class InvalidProof(LedgerError):  # noqa: N818 - reads as a verdict, like InvalidSignature
    """A Merkle inclusion or consistency proof does not verify."""


class InvalidTreeHead(LedgerError):  # noqa: N818 - reads as a verdict, like InvalidSignature
    """A signed tree head is malformed or its signature does not verify."""


class LedgerConflict(LedgerError):  # noqa: N818 - names the situation, like LedgerTampered
    """A store was asked to write an entry at a position other than its current size."""
