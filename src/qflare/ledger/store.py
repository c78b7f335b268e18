"""The storage seam of the ledger: an append-only sequence of canonical entry bytes.

A store keeps exactly the bytes :func:`~qflare.ledger.entry.encode_entry` produced, which are the
bytes every hash covers, so it never has to know the entry format and never re-encodes anything.
A SQL implementation needs one table ``(idx INTEGER PRIMARY KEY, data BLOB NOT NULL)``:

* ``append_entry`` inserts one row; the primary key makes a second writer at the same index fail.
* ``entries`` selects ``WHERE idx >= start AND idx < stop ORDER BY idx`` and yields ``data``.
* ``size`` is ``SELECT COUNT(*)`` (rows are dense from 0, so it is also ``MAX(idx) + 1``).

The store is trusted for availability only. Anything it returns is re-verified by the
:class:`~qflare.ledger.ledger.Ledger` (chain, cached leaf hashes) and by an auditor (signed heads).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

from qflare.ledger.entry import AuditEntry, decode_entry
from qflare.ledger.errors import InvalidEntry, LedgerConflict, LedgerTampered


@runtime_checkable
class LedgerStore(Protocol):
    """Append-only storage of canonical entry bytes, indexed densely from 0."""

    def append_entry(self, index: int, data: bytes) -> None:
        """Durably store ``data`` as entry ``index``, atomically.

        Args:
            index: Must equal ``size()``; rows are never overwritten.
            data: Canonical entry bytes, stored and returned unchanged.

        Raises:
            Exception: when ``index != size()`` (e.g. :class:`LedgerConflict`, or the database's
                integrity error); nothing is written then.
        """
        ...

    def entries(self, start: int = 0, stop: int | None = None) -> Iterable[bytes]:
        """Entries ``start <= index < stop`` (``stop=None``: to the end), in index order."""
        ...

    def size(self) -> int:
        """Number of entries stored."""
        ...


class InMemoryLedgerStore:
    """A :class:`LedgerStore` in a Python list, for tests, simulations and short-lived servers.

    Args:
        rows: Initial canonical entry bytes (e.g. a copy of another store).
    """

    def __init__(self, rows: Iterable[bytes] = ()) -> None:
        self._rows: list[bytes] = [bytes(r) for r in rows]

    def append_entry(self, index: int, data: bytes) -> None:
        """Append ``data`` at ``index``.

        Raises:
            LedgerConflict: ``index`` is not the current size.
        """
        if index != len(self._rows):
            raise LedgerConflict(f"cannot write entry {index}: the store holds {len(self._rows)}")
        self._rows.append(bytes(data))

    def entries(self, start: int = 0, stop: int | None = None) -> list[bytes]:
        """Entries ``start <= index < stop``, in index order."""
        if start < 0 or (stop is not None and stop < start):
            raise ValueError(f"bad range [{start}, {stop})")
        return self._rows[start:stop]

    def size(self) -> int:
        """Number of entries stored."""
        return len(self._rows)


def decode_rows(rows: Iterable[bytes], start: int = 0) -> Iterator[AuditEntry]:
    """Decode stored rows, the first one being entry ``start``.

    Raises:
        LedgerTampered: a row is not a canonical, valid entry (naming its index).
    """
    for index, data in enumerate(rows, start):
        try:
            yield decode_entry(data)
        except InvalidEntry as exc:
            raise LedgerTampered(index, f"stored bytes are not a valid entry: {exc}") from exc


def read_entries(
    store: LedgerStore, start: int = 0, stop: int | None = None
) -> Iterator[AuditEntry]:
    """Entries ``start <= index < stop`` of ``store``, decoded but not chain-checked.

    This is what an auditor feeds to :func:`~qflare.ledger.audit.audit`, which checks the chain.
    """
    return decode_rows(store.entries(start, stop), start)
