"""Auditing a server's ledger from the outside (what ``qflare ledger verify`` runs).

:func:`verify_server` downloads the cosigned head and every entry it covers, then checks, in
order: the server's signature; consistency with the head saved by the previous run (an RFC 6962
proof from the server, and again by recomputing the old root from the entries); the cosignature
quorum of the witnesses the auditor trusts; the hash chain; and that the entries hash to the
signed root. The ledger key is the one pinned (``--server-key``), else the one saved by the
previous run, else the one the server names: the witnesses' cosignatures bind its fingerprint,
so a quorum of them vouches for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Protocol

import msgspec

from qflare.ledger import (
    AuditEntry,
    CosignedHead,
    HeadTracker,
    InvalidEntry,
    LedgerTampered,
    audit,
    decode_entry,
    verify_cosigned_head,
)
from qflare.ledger.merkle import ConsistencyProof
from qflare.ledger.wire import MAX_PAGE, EntryPage, HeadReply
from qflare.ledger.witness import COSIGNATURE_VERSION, LEDGER_SCHEME
from qflare.node.ledger_watch import WitnessConfig

__all__ = ["AuditorRecord", "LedgerReader", "VerifyReport", "fetch_entries", "verify_server"]

KEY_PINNED: Final = "pinned (--server-key)"
KEY_SAVED: Final = "saved by the previous run"
KEY_VOUCHED: Final = "named by the server, vouched for by the witness quorum"


class LedgerReader(Protocol):
    """The ledger endpoints of a server (:class:`~qflare.node.transport.HttpApi`)."""

    def ledger_head(self) -> HeadReply:
        """The latest cosigned head."""
        ...

    def ledger_consistency(self, first: int, second: int) -> ConsistencyProof:
        """Proof that the tree of ``second`` entries extends the tree of ``first``."""
        ...

    def ledger_entries(self, start: int, end: int) -> EntryPage:
        """Canonical bytes of entries ``[start, end)``."""
        ...


class AuditorRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What one successful run saves for the next (``--state FILE``).

    Attributes:
        version: Format version.
        server_public_key: The ledger key that was checked.
        head: The head that was verified.
    """

    version: int = COSIGNATURE_VERSION
    server_public_key: bytes
    head: CosignedHead


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_server` established.

    Attributes:
        head: The verified head.
        key_source: Where the ledger key came from.
        witnesses: Fingerprints of the witnesses whose cosignatures verified.
        entries: Entries downloaded, chain-checked and hashed to the signed root.
        chain_head: Link of the last entry.
        previous_size: Size of the head saved by the previous run (``None`` on a first run).
        record: What to save for the next run.
    """

    head: CosignedHead
    key_source: str
    witnesses: tuple[bytes, ...]
    entries: int
    chain_head: bytes
    previous_size: int | None
    record: AuditorRecord


def fetch_entries(reader: LedgerReader, size: int) -> Iterator[AuditEntry]:
    """Entries ``0 .. size - 1``, page by page, decoded (the chain is checked by the caller).

    Raises:
        LedgerTampered: a page is for other indices, empty, or holds a malformed entry.
    """
    start = 0
    while start < size:
        page = reader.ledger_entries(start, min(start + MAX_PAGE, size))
        if page.start != start or not page.entries or len(page.entries) > size - start:
            raise LedgerTampered(start, "the server returned another page than asked for")
        for index, data in enumerate(page.entries, start):
            try:
                yield decode_entry(data)
            except InvalidEntry as exc:
                raise LedgerTampered(index, f"not a valid entry: {exc}") from exc
        start += len(page.entries)


def verify_server(
    reader: LedgerReader,
    witnesses: WitnessConfig,
    *,
    server_key: bytes | None = None,
    previous: AuditorRecord | None = None,
) -> VerifyReport:
    """Audit a server's ledger; see the module docstring.

    Raises:
        InvalidTreeHead: the head is not signed by the ledger key.
        LedgerForked: the head is not consistent with the previously saved one.
        StaleTreeHead: the head is older than the previously saved one.
        QuorumNotMet: too few cosignatures of the trusted witnesses.
        LedgerTampered: the entries do not chain or do not hash to the signed root.
        ValueError: ``server_key`` differs from the key saved by the previous run.
        TransportError: the server could not be reached or answered badly.
    """
    reply = reader.ledger_head()
    key, source = _ledger_key(reply, server_key, previous)
    held = previous.head if previous is not None else None
    tracker = HeadTracker(key, witnesses.keys, witnesses.quorum, held)
    span = tracker.proof_range(reply.head)
    tracker.accept(reply.head, reader.ledger_consistency(*span) if span else None)
    head = reply.head
    cosigned_by = verify_cosigned_head(head, witnesses.keys, witnesses.quorum, key)
    entries = fetch_entries(reader, head.sth.tree_size)
    report = audit(entries, held.sth if held else None, head.sth, key, scheme=LEDGER_SCHEME)
    return VerifyReport(
        head=head,
        key_source=source,
        witnesses=cosigned_by,
        entries=report.entries_checked,
        chain_head=report.chain_head,
        previous_size=None if held is None else held.sth.tree_size,
        record=AuditorRecord(server_public_key=key, head=tracker.held or head),
    )


def _ledger_key(
    reply: HeadReply, pinned: bytes | None, previous: AuditorRecord | None
) -> tuple[bytes, str]:
    if previous is not None:
        if pinned is not None and pinned != previous.server_public_key:
            raise ValueError("--server-key differs from the ledger key saved by the previous run")
        return previous.server_public_key, KEY_PINNED if pinned is not None else KEY_SAVED
    if pinned is not None:
        return pinned, KEY_PINNED
    return reply.server_public_key, KEY_VOUCHED
