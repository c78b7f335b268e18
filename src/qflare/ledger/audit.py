"""Offline audit: what ``qflare ledger verify`` runs over a copy of the ledger.

Given the entries, an older head the auditor kept and the newest head, :func:`audit` checks
both signatures, the chain, that the entries hash to the newest root, and that the newest tree
is an append-only extension of the older one (RFC 6962 consistency). An operator who edits,
drops or reorders entries and re-signs a fresh head is caught by the last check.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from qflare.crypto import SignatureScheme
from qflare.ledger.chain import walk_chain
from qflare.ledger.entry import GENESIS_HASH, AuditEntry, encode_entry
from qflare.ledger.errors import InvalidProof, LedgerTampered
from qflare.ledger.head import STH_CONTEXT, SignedTreeHead, verify_tree_head
from qflare.ledger.merkle import (
    EMPTY_ROOT,
    InclusionProof,
    MerkleTree,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)


class AuditReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a successful audit established.

    Attributes:
        entries_checked: Entries whose chain links were verified.
        old_size: Size of the older head (0 without one).
        new_size: Size of the newest head; entries ``[0, new_size)`` match its signed root.
        new_root: Root hash of the newest head.
        chain_head: Link of the last entry checked.
        unsigned_entries: Entries after the newest head, chain-checked but not yet signed.
    """

    entries_checked: int
    old_size: int
    new_size: int
    new_root: bytes
    chain_head: bytes
    unsigned_entries: int


def audit(
    entries: Iterable[AuditEntry],
    sth_old: SignedTreeHead | None,
    sth_new: SignedTreeHead,
    public_key: bytes,
    *,
    scheme: SignatureScheme | None = None,
    context: bytes = STH_CONTEXT,
) -> AuditReport:
    """Verify a full ledger copy against two signed tree heads.

    Args:
        entries: Every entry from index 0, in order.
        sth_old: A head the auditor saw earlier (``None`` on a first audit).
        sth_new: The newest head.
        public_key: The ledger operator's public key.
        scheme: If given, the scheme both heads must use.
        context: Signature context of the heads.

    Returns:
        A report of what was checked.

    Raises:
        InvalidTreeHead: a head is malformed or its signature fails.
        LedgerTampered: the chain breaks, entries are missing, the entries do not match the
            newest root, or the newest head does not extend the older one.
    """
    for sth in (sth_old, sth_new):
        if sth is not None:
            verify_tree_head(sth, public_key, scheme=scheme, context=context)
    old_size = 0 if sth_old is None else sth_old.tree_size
    old_root = EMPTY_ROOT if sth_old is None else sth_old.root_hash
    if old_size > sth_new.tree_size:
        raise LedgerTampered(
            None, f"newer head covers {sth_new.tree_size} entries, older one {old_size}"
        )
    tree, link = _rebuild(entries)
    _check_covers(tree, sth_new)
    try:
        verify_consistency(
            tree.consistency_proof(old_size, sth_new.tree_size), old_root, sth_new.root_hash
        )
    except InvalidProof as exc:
        raise LedgerTampered(
            None, f"history before entry {old_size} was rewritten since the older head"
        ) from exc
    return AuditReport(
        entries_checked=tree.size,
        old_size=old_size,
        new_size=sth_new.tree_size,
        new_root=sth_new.root_hash,
        chain_head=link,
        unsigned_entries=tree.size - sth_new.tree_size,
    )


def _rebuild(entries: Iterable[AuditEntry]) -> tuple[MerkleTree, bytes]:
    tree, link = MerkleTree(), GENESIS_HASH
    for data, next_link in walk_chain(entries):
        tree.append(data)
        link = next_link
    return tree, link


def _check_covers(tree: MerkleTree, sth: SignedTreeHead) -> None:
    if tree.size < sth.tree_size:
        raise LedgerTampered(
            tree.size, f"only {tree.size} entries, but the head signs {sth.tree_size}"
        )
    if tree.root(sth.tree_size) != sth.root_hash:
        raise LedgerTampered(None, f"entries 0..{sth.tree_size - 1} do not hash to the signed root")


def verify_entry_in_head(
    entry: AuditEntry,
    proof: InclusionProof,
    sth: SignedTreeHead,
    public_key: bytes,
    *,
    context: bytes = STH_CONTEXT,
) -> None:
    """Check that ``entry`` is recorded under a signed head (e.g. a node checking its enrollment).

    Raises:
        InvalidTreeHead: the head's signature fails.
        InvalidProof: the entry is not at ``proof.leaf_index`` of the signed tree.
    """
    verify_tree_head(sth, public_key, context=context)
    if proof.tree_size != sth.tree_size or proof.leaf_index != entry.index:
        raise InvalidProof("proof is for another entry or another tree size")
    verify_inclusion(proof, leaf_hash(encode_entry(entry)), sth.root_hash)
