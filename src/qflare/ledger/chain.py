"""The hash chain: each entry carries the link of the one before it.

``link(e) = SHA-256(0x02 || e.prev_hash || encode_entry(e))`` and ``e[i].prev_hash = link(e[i-1])``
with ``GENESIS_HASH`` (32 zero bytes) before entry 0. The prefix 0x02 keeps links apart from RFC
6962 leaf (0x00) and node (0x01) hashes. Together with the ``index`` field, the chain alone
detects a changed, removed, inserted or reordered entry anywhere but at the very end; the end is
covered by the signed Merkle root (see :mod:`qflare.ledger.audit`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator

import msgspec

from qflare.ledger.entry import GENESIS_HASH, AuditEntry, encode_entry
from qflare.ledger.errors import LedgerTampered

CHAIN_PREFIX = b"\x02"


def chain_link(prev_hash: bytes, data: bytes) -> bytes:
    """Chain link of an entry with ``prev_hash`` and canonical bytes ``data``."""
    return hashlib.sha256(CHAIN_PREFIX + prev_hash + data).digest()


def check_link(entry: AuditEntry, index: int, prev_link: bytes) -> bytes:
    """Check that ``entry`` belongs at ``index`` right after ``prev_link``; return its bytes.

    Raises:
        LedgerTampered: the entry is numbered differently, does not point at ``prev_link``,
            or can no longer be encoded (its payload was mutated in memory).
    """
    if entry.index != index:
        raise LedgerTampered(
            index, f"found entry numbered {entry.index}: entries were removed, added or reordered"
        )
    if not hmac.compare_digest(entry.prev_hash, prev_link):
        raise LedgerTampered(
            index,
            f"prev_hash does not match the link of entry {index - 1} "
            f"(entry {index - 1} or {index} was altered)",
        )
    try:
        return encode_entry(entry)
    except (msgspec.EncodeError, TypeError, OverflowError) as exc:
        raise LedgerTampered(index, f"entry no longer encodes: {exc}") from exc


def walk_chain(
    entries: Iterable[AuditEntry], *, start: int = 0, prev_link: bytes = GENESIS_HASH
) -> Iterator[tuple[bytes, bytes]]:
    """Yield ``(canonical bytes, link)`` of each entry after checking its place in the chain.

    Args:
        entries: Entries in ledger order, the first one at index ``start``.
        start: Index of the first entry.
        prev_link: Link of the entry before ``start`` (``GENESIS_HASH`` when ``start`` is 0).

    Raises:
        LedgerTampered: at the first entry that breaks the chain.
    """
    link = prev_link
    for index, entry in enumerate(entries, start):
        data = check_link(entry, index, link)
        link = chain_link(link, data)
        yield data, link


def verify_chain(
    entries: Iterable[AuditEntry], *, start: int = 0, prev_link: bytes = GENESIS_HASH
) -> bytes:
    """Verify a run of entries as one unbroken chain; return the link of the last one.

    Args:
        entries: Entries in ledger order, the first one at index ``start``.
        start: Index of the first entry.
        prev_link: Link of the entry before ``start``.

    Returns:
        The chain head: the link a next entry would carry as ``prev_hash``.

    Raises:
        LedgerTampered: naming the first entry at which the chain breaks.
    """
    link = prev_link
    for _data, next_link in walk_chain(entries, start=start, prev_link=prev_link):
        link = next_link
    return link
