"""The audit ledger: append entries, sign heads, serve proofs, and re-verify the store.

A :class:`Ledger` is the single writer of one :class:`~qflare.ledger.store.LedgerStore`. It keeps
the Merkle tree (leaf and subtree hashes, about 64 bytes per entry) and the chain head in memory,
rebuilt and checked from the store when it starts, so a root or a proof never reads the store and
:meth:`Ledger.verify` can name the exact row that was changed behind its back.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Mapping

from qflare.crypto import Signer
from qflare.ledger.chain import chain_link, walk_chain
from qflare.ledger.entry import GENESIS_HASH, AuditEntry, PayloadValue, encode_entry
from qflare.ledger.errors import LedgerTampered
from qflare.ledger.head import STH_CONTEXT, SignedTreeHead, sign_tree_head
from qflare.ledger.merkle import ConsistencyProof, InclusionProof, MerkleTree, leaf_hash
from qflare.ledger.store import InMemoryLedgerStore, LedgerStore, decode_rows


class Ledger:
    """Hash-chained, Merkle-tree audit ledger over an injected store.

    Args:
        store: Where entries live (default: a fresh in-memory store). Existing entries are read,
            chain-checked and hashed into the tree before the ledger is usable.

    Raises:
        LedgerTampered: the store's existing entries do not form a valid chain.
    """

    def __init__(self, store: LedgerStore | None = None) -> None:
        self._store: LedgerStore = InMemoryLedgerStore() if store is None else store
        self._lock = threading.Lock()
        self._tree = MerkleTree()
        self._link = GENESIS_HASH
        self.sync()

    @property
    def size(self) -> int:
        """Number of entries."""
        return self._tree.size

    @property
    def chain_head(self) -> bytes:
        """Link of the last entry: the ``prev_hash`` the next entry will carry."""
        return self._link

    def sync(self) -> int:
        """Load and check entries another process appended to the store; return how many.

        Raises:
            LedgerTampered: a new entry does not continue the chain.
        """
        with self._lock:
            start = self._tree.size
            rows = list(self._store.entries(start, None))
            for data, link in walk_chain(
                decode_rows(rows, start), start=start, prev_link=self._link
            ):
                self._tree.append(data)
                self._link = link
            return self._tree.size - start

    def append(
        self, kind: str, actor: str, payload: Mapping[str, PayloadValue] | None, now: float
    ) -> AuditEntry:
        """Record one event; it is durable in the store when this returns.

        Args:
            kind: Event kind (an :class:`~qflare.ledger.entry.EntryKind` or snake_case name).
            actor: Who caused it.
            payload: Public facts about it; never secrets.
            now: Current time from the injected clock.

        Raises:
            InvalidEntry: a field is malformed or a payload value is not allowed.
        """
        self.sync()  # another writer (e.g. the operator CLI) may have appended since
        with self._lock:
            entry = AuditEntry(
                index=self._tree.size,
                timestamp=float(now),
                kind=str(kind),
                actor=actor,
                payload=dict(payload or {}),
                prev_hash=self._link,
            )
            data = encode_entry(entry)
            self._store.append_entry(entry.index, data)
            self._tree.append(data)
            self._link = chain_link(self._link, data)
            return entry

    def entries(self, start: int = 0, stop: int | None = None) -> list[AuditEntry]:
        """Entries ``start <= index < stop``, each checked against the hash it was appended with.

        Raises:
            LedgerTampered: a stored row differs from what was appended.
        """
        stop = self.size if stop is None else min(stop, self.size)
        rows = list(self._store.entries(start, stop))
        if len(rows) != max(stop - start, 0):
            raise LedgerTampered(
                start + len(rows), f"store returned too few rows for [{start}, {stop})"
            )
        for index, data in enumerate(rows, start):
            self._check_row(index, data)
        return list(decode_rows(rows, start))

    def _check_row(self, index: int, data: bytes) -> None:
        if not hmac.compare_digest(leaf_hash(data), self._tree.leaf(index)):
            raise LedgerTampered(index, "stored entry differs from the one appended")

    def verify(self) -> None:
        """Re-read the whole store and check every row against the hash it was appended with.

        Every row was chain-checked before its leaf hash was recorded, so equal leaf hashes
        (SHA-256) mean an unchanged, still valid chain.

        Raises:
            LedgerTampered: naming the first row that was changed, removed or added.
        """
        rows = list(self._store.entries(0, None))
        for index, data in enumerate(rows[: self.size]):
            self._check_row(index, data)
        if len(rows) != self.size:
            raise LedgerTampered(
                min(len(rows), self.size),
                f"store holds {len(rows)} entries, ledger wrote {self.size}",
            )

    def leaf_hash(self, index: int) -> bytes:
        """RFC 6962 leaf hash of entry ``index``."""
        return self._tree.leaf(index)

    def root(self, tree_size: int | None = None) -> bytes:
        """Merkle root of the first ``tree_size`` entries (default: all)."""
        return self._tree.root(tree_size)

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> InclusionProof:
        """Proof that entry ``index`` is in the tree of ``tree_size`` entries (default: all)."""
        return self._tree.inclusion_proof(index, tree_size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        """Proof that the tree of ``new_size`` entries extends the one of ``old_size``."""
        return self._tree.consistency_proof(old_size, new_size)

    def head(self, signer: Signer, now: float, *, context: bytes = STH_CONTEXT) -> SignedTreeHead:
        """Sign the current tree head with ``signer`` at time ``now``."""
        with self._lock:
            size, root = self._tree.size, self._tree.root()
        return sign_tree_head(signer, size, root, now, context=context)
