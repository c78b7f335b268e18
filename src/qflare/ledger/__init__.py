"""Tamper-evident audit ledger: hash chain + RFC 6962 Merkle tree + signed tree heads.

Every server event becomes an :class:`AuditEntry` whose ``prev_hash`` chains it to the one
before. The entries are the leaves of an RFC 6962 Merkle tree; the server periodically signs
the tree's root (:class:`SignedTreeHead`). Anyone holding an old head can later prove that the
ledger only grew (:func:`audit`), and any node can check one entry against a head
(:func:`verify_entry_in_head`). Storage is injected through :class:`LedgerStore`.
"""

from qflare.ledger.audit import AuditReport, audit, verify_entry_in_head
from qflare.ledger.chain import chain_link, verify_chain
from qflare.ledger.entry import (
    GENESIS_HASH,
    LEDGER_VERSION,
    AuditEntry,
    EntryKind,
    Payload,
    PayloadValue,
    decode_entry,
    encode_entry,
)
from qflare.ledger.errors import (
    InvalidEntry,
    InvalidProof,
    InvalidTreeHead,
    LedgerConflict,
    LedgerError,
    LedgerTampered,
)
from qflare.ledger.head import (
    STH_CONTEXT,
    SignedTreeHead,
    decode_tree_head,
    encode_tree_head,
    sign_tree_head,
    verify_tree_head,
)
from qflare.ledger.ledger import Ledger
from qflare.ledger.merkle import (
    EMPTY_ROOT,
    ConsistencyProof,
    InclusionProof,
    MerkleTree,
    leaf_hash,
    node_hash,
    root_from_inclusion,
    verify_consistency,
    verify_inclusion,
)
from qflare.ledger.store import InMemoryLedgerStore, LedgerStore, decode_rows, read_entries

__all__ = [
    "EMPTY_ROOT",
    "GENESIS_HASH",
    "LEDGER_VERSION",
    "STH_CONTEXT",
    "AuditEntry",
    "AuditReport",
    "ConsistencyProof",
    "EntryKind",
    "InMemoryLedgerStore",
    "InclusionProof",
    "InvalidEntry",
    "InvalidProof",
    "InvalidTreeHead",
    "Ledger",
    "LedgerConflict",
    "LedgerError",
    "LedgerStore",
    "LedgerTampered",
    "MerkleTree",
    "Payload",
    "PayloadValue",
    "SignedTreeHead",
    "audit",
    "chain_link",
    "decode_entry",
    "decode_rows",
    "decode_tree_head",
    "encode_entry",
    "encode_tree_head",
    "leaf_hash",
    "node_hash",
    "read_entries",
    "root_from_inclusion",
    "sign_tree_head",
    "verify_chain",
    "verify_consistency",
    "verify_entry_in_head",
    "verify_inclusion",
    "verify_tree_head",
]
