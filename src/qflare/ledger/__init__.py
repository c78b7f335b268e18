"""Tamper-evident audit ledger: hash chain + RFC 6962 Merkle tree + signed tree heads.

Every server event becomes an :class:`AuditEntry` whose ``prev_hash`` chains it to the one
before. The entries are the leaves of an RFC 6962 Merkle tree; the server periodically signs
the tree's root (:class:`SignedTreeHead`). Anyone holding an old head can later prove that the
ledger only grew (:func:`audit`), and any node can check one entry against a head
(:func:`verify_entry_in_head`). Storage is injected through :class:`LedgerStore`.

Independent witnesses cosign a head only after checking a consistency proof from the last head
they cosigned (:func:`witness_cosign`); relying parties keep a :class:`HeadTracker` that accepts
only consistent heads cosigned by a quorum of the witnesses they trust, so a server restarted over
a rewritten table is caught (:class:`LedgerForked`).
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
    HeadNotAccepted,
    InvalidCosignature,
    InvalidEntry,
    InvalidKeyFile,
    InvalidProof,
    InvalidTreeHead,
    LedgerConflict,
    LedgerError,
    LedgerForked,
    LedgerTampered,
    QuorumNotMet,
    RefusalCode,
    StaleTreeHead,
    WitnessRefused,
)
from qflare.ledger.head import (
    STH_CONTEXT,
    SignedTreeHead,
    decode_tree_head,
    encode_tree_head,
    sign_tree_head,
    verify_tree_head,
)
from qflare.ledger.keyfile import decode_public_key, encode_public_key, key_fingerprint
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
from qflare.ledger.tracker import HeadTracker
from qflare.ledger.witness import (
    COSIGNATURE_CONTEXT,
    Cosignature,
    CosignedHead,
    CosignRequest,
    WitnessState,
    sign_cosignature,
    verify_cosignature,
    verify_cosigned_head,
    witness_cosign,
)

__all__ = [
    "COSIGNATURE_CONTEXT",
    "EMPTY_ROOT",
    "GENESIS_HASH",
    "LEDGER_VERSION",
    "STH_CONTEXT",
    "AuditEntry",
    "AuditReport",
    "ConsistencyProof",
    "CosignRequest",
    "Cosignature",
    "CosignedHead",
    "EntryKind",
    "HeadNotAccepted",
    "HeadTracker",
    "InMemoryLedgerStore",
    "InclusionProof",
    "InvalidCosignature",
    "InvalidEntry",
    "InvalidKeyFile",
    "InvalidProof",
    "InvalidTreeHead",
    "Ledger",
    "LedgerConflict",
    "LedgerError",
    "LedgerForked",
    "LedgerStore",
    "LedgerTampered",
    "MerkleTree",
    "Payload",
    "PayloadValue",
    "QuorumNotMet",
    "RefusalCode",
    "SignedTreeHead",
    "StaleTreeHead",
    "WitnessRefused",
    "WitnessState",
    "audit",
    "chain_link",
    "decode_entry",
    "decode_public_key",
    "decode_rows",
    "decode_tree_head",
    "encode_entry",
    "encode_public_key",
    "encode_tree_head",
    "key_fingerprint",
    "leaf_hash",
    "node_hash",
    "read_entries",
    "root_from_inclusion",
    "sign_cosignature",
    "sign_tree_head",
    "verify_chain",
    "verify_consistency",
    "verify_cosignature",
    "verify_cosigned_head",
    "verify_entry_in_head",
    "verify_inclusion",
    "verify_tree_head",
    "witness_cosign",
]
