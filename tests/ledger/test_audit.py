"""Offline audit: an operator who rewrites history, even re-signing its heads, is caught."""

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qflare.crypto import SignatureScheme
from qflare.ledger import (
    GENESIS_HASH,
    InMemoryLedgerStore,
    InvalidTreeHead,
    Ledger,
    LedgerTampered,
    audit,
    chain_link,
    encode_entry,
    read_entries,
    sign_tree_head,
)
from qflare.ledger.merkle import MerkleTree


def history(n, start=0, ledger=None):
    ledger = ledger or Ledger()
    for i in range(start, start + n):
        ledger.append("round_complete", "server", {"round": i, "survivors": 10 + i % 3}, 10.0 + i)
    return ledger


def rechain(entries):
    """What an operator with write access does: fix every prev_hash after an edit."""
    out, link = [], GENESIS_HASH
    for e in entries:
        e = msgspec.structs.replace(e, prev_hash=link)
        link = chain_link(link, encode_entry(e))
        out.append(e)
    return out


def resign(entries, signer, size, now=99.0):
    tree = MerkleTree()
    for e in entries[:size]:
        tree.append(encode_entry(e))
    return sign_tree_head(signer, size, tree.root(), now)


def test_honest_growth_passes(signer):
    ledger = history(5)
    old = ledger.head(signer, 20.0)
    history(7, start=5, ledger=ledger)
    new = ledger.head(signer, 30.0)
    history(3, start=12, ledger=ledger)  # appended after the newest head: unsigned tail
    report = audit(ledger.entries(), old, new, signer.public_key, scheme=SignatureScheme.MLDSA65)
    assert (report.old_size, report.new_size, report.entries_checked) == (5, 12, 15)
    assert report.unsigned_entries == 3
    assert report.new_root == ledger.root(12)
    assert report.chain_head == ledger.chain_head
    assert audit(ledger.entries(), None, new, signer.public_key).old_size == 0
    assert audit(ledger.entries(), new, new, signer.public_key).new_size == 12


@given(st.integers(1, 20), st.integers(0, 10), st.data())
def test_rewritten_and_resigned_history_is_caught(signer, old_size, grow, data):
    ledger = history(old_size + grow)
    old = sign_tree_head(signer, old_size, ledger.root(old_size), 5.0)
    i = data.draw(st.integers(0, old_size - 1), label="rewritten entry")
    entries = ledger.entries()
    entries[i] = msgspec.structs.replace(entries[i], payload={"round": i, "survivors": 0})
    forged = rechain(entries)
    forged_head = resign(forged, signer, len(forged))
    with pytest.raises(LedgerTampered, match="rewritten"):
        audit(forged, old, forged_head, signer.public_key)


@given(st.integers(1, 20), st.data())
def test_removed_reordered_or_truncated_history_is_caught(signer, n, data):
    ledger = history(n + 1)
    old = ledger.head(signer, 50.0)
    entries = ledger.entries()
    i = data.draw(st.integers(0, n - 1))
    mode = data.draw(st.sampled_from(["remove", "swap", "truncate"]))
    if mode == "remove":
        del entries[i]
    elif mode == "swap":
        entries[i], entries[i + 1] = entries[i + 1], entries[i]
    else:
        del entries[i + 1 :]
    forged = rechain([msgspec.structs.replace(e, index=k) for k, e in enumerate(entries)])
    with pytest.raises(LedgerTampered):
        audit(forged, old, resign(forged, signer, len(forged)), signer.public_key)
    with pytest.raises(LedgerTampered):  # without re-signing, the old head alone catches it
        audit(forged, None, old, signer.public_key)


def test_edits_without_rechaining_name_the_entry(signer):
    ledger = history(8)
    head = ledger.head(signer, 50.0)
    entries = ledger.entries()
    entries[3] = msgspec.structs.replace(entries[3], actor="mallory")
    with pytest.raises(LedgerTampered) as info:
        audit(entries, None, head, signer.public_key)
    assert info.value.index == 4
    last = ledger.entries()
    last[-1] = msgspec.structs.replace(last[-1], actor="mallory")  # no successor to catch it
    with pytest.raises(LedgerTampered, match="signed root"):
        audit(last, None, head, signer.public_key)


def test_missing_entries_and_shrinking_heads(signer):
    ledger = history(10)
    head = ledger.head(signer, 50.0)
    with pytest.raises(LedgerTampered, match="only 6 entries"):
        audit(ledger.entries(0, 6), None, head, signer.public_key)
    smaller = sign_tree_head(signer, 6, ledger.root(6), 60.0)
    with pytest.raises(LedgerTampered, match="older one 10"):
        audit(ledger.entries(), head, smaller, signer.public_key)


def test_forked_heads_of_equal_size_are_caught(signer):
    honest = history(6)
    fork = Ledger()
    for i in range(6):
        fork.append("round_complete", "server", {"round": i, "survivors": 0}, 10.0 + i)
    with pytest.raises(LedgerTampered):
        audit(fork.entries(), honest.head(signer, 1.0), fork.head(signer, 2.0), signer.public_key)


def test_rewriting_after_the_old_head_is_allowed(signer):
    # The old head only vouches for its own prefix; later entries are vouched for by the new head.
    ledger = history(10)
    old = sign_tree_head(signer, 4, ledger.root(4), 5.0)
    entries = ledger.entries()
    entries[7] = msgspec.structs.replace(entries[7], actor="other")
    forged = rechain(entries)
    report = audit(forged, old, resign(forged, signer, 10), signer.public_key)
    assert report.new_size == 10


def test_heads_from_another_key_are_refused(signer, other_signer):
    ledger = history(4)
    with pytest.raises(InvalidTreeHead):
        audit(ledger.entries(), None, ledger.head(other_signer, 1.0), signer.public_key)
    with pytest.raises(InvalidTreeHead):
        audit(
            ledger.entries(),
            ledger.head(other_signer, 1.0),
            ledger.head(signer, 2.0),
            signer.public_key,
        )


def test_audit_straight_from_a_store(signer):
    store = InMemoryLedgerStore()
    ledger = history(6, ledger=Ledger(store))
    head = ledger.head(signer, 1.0)
    assert audit(read_entries(store), None, head, signer.public_key).entries_checked == 6
    rows = store.entries()
    rows[2] = b"\x81\xa1x\x01"
    with pytest.raises(LedgerTampered) as info:
        audit(read_entries(InMemoryLedgerStore(rows)), None, head, signer.public_key)
    assert info.value.index == 2
