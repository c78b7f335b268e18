"""The Ledger: chain building, tamper detection (in memory and in the store), proofs, seams."""

import itertools

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qflare.ledger import (
    GENESIS_HASH,
    EntryKind,
    InMemoryLedgerStore,
    InvalidEntry,
    InvalidProof,
    InvalidTreeHead,
    Ledger,
    LedgerConflict,
    LedgerStore,
    LedgerTampered,
    chain_link,
    encode_entry,
    verify_chain,
    verify_entry_in_head,
    verify_tree_head,
)

KINDS = list(EntryKind)


class ListStore:
    """A second LedgerStore implementation, written only against the Protocol's contract."""

    def __init__(self):
        self.rows = []

    def append_entry(self, index, data):
        if index != len(self.rows):
            raise LedgerConflict("index taken")
        self.rows.append(data)

    def entries(self, start=0, stop=None):
        yield from self.rows[start:stop]

    def size(self):
        return len(self.rows)


def fill(ledger, n, start=0):
    return [
        ledger.append(
            KINDS[i % len(KINDS)], f"node-{i % 5}", {"round": i, "ok": i % 2 == 0}, 100.0 + i
        )
        for i in range(start, start + n)
    ]


def edited(entry, **changes):
    return msgspec.structs.replace(
        entry, **(changes or {"payload": {**entry.payload, "round": -1}})
    )


def test_append_builds_a_verifiable_chain():
    ledger = Ledger(ListStore())
    entries = fill(ledger, 12)
    assert [e.index for e in entries] == list(range(12))
    assert entries[0].prev_hash == GENESIS_HASH
    for a, b in itertools.pairwise(entries):
        assert b.prev_hash == chain_link(a.prev_hash, encode_entry(a))
    assert verify_chain(entries) == ledger.chain_head
    assert ledger.entries() == entries
    assert ledger.entries(3, 5) == entries[3:5]
    ledger.verify()


tamper_modes = st.sampled_from(["edit", "remove", "swap", "duplicate", "insert"])


@given(st.integers(2, 30), st.data(), tamper_modes)
def test_chain_names_the_first_bad_entry(n, data, mode):
    ledger = Ledger()
    entries = fill(ledger, n)
    i = data.draw(st.integers(0, n - 2), label="tampered position")
    bad = list(entries)
    if mode == "edit":  # content of i changed: i's link no longer matches i+1's prev_hash
        bad[i], first_bad = edited(bad[i]), i + 1
    elif mode == "remove":
        del bad[i]
        first_bad = i
    elif mode == "swap":
        bad[i], bad[i + 1], first_bad = bad[i + 1], bad[i], i
    elif mode == "duplicate":
        bad.insert(i + 1, bad[i])
        first_bad = i + 1
    else:  # a well-linked forgery slipped in at i pushes the real entry i to position i + 1
        bad.insert(i, edited(bad[i], actor="mallory"))
        first_bad = i + 1
    with pytest.raises(LedgerTampered) as info:
        verify_chain(bad)
    assert info.value.index == first_bad


def test_last_entry_edit_changes_the_chain_head():
    ledger = Ledger()
    entries = fill(ledger, 5)
    entries[-1] = edited(entries[-1])
    assert verify_chain(entries) != ledger.chain_head  # caught by the signed head, see audit


@given(st.integers(1, 25), st.data())
def test_store_row_edits_are_pinpointed(n, data):
    store = ListStore()
    ledger = Ledger(store)
    entries = fill(ledger, n)
    i = data.draw(st.integers(0, n - 1))
    store.rows[i] = encode_entry(edited(entries[i]))
    with pytest.raises(LedgerTampered) as info:
        ledger.verify()
    assert info.value.index == i
    with pytest.raises(LedgerTampered) as info:
        ledger.entries(i, i + 1)
    assert info.value.index == i


@pytest.mark.parametrize("mode", ["delete", "extra", "garbage"])
def test_store_row_removal_addition_and_garbage_are_detected(mode):
    store = ListStore()
    ledger = Ledger(store)
    fill(ledger, 6)
    if mode == "delete":
        del store.rows[2]
    elif mode == "extra":
        store.rows.append(store.rows[-1])
    else:
        store.rows[2] = b"\xc1not msgpack"
    with pytest.raises(LedgerTampered) as info:
        ledger.verify()
    assert info.value.index == (6 if mode == "extra" else 2)


def test_reload_restores_state_and_continues():
    store = ListStore()
    first = Ledger(store)
    fill(first, 9)
    again = Ledger(store)
    assert (again.size, again.root(), again.chain_head) == (9, first.root(), first.chain_head)
    fill(again, 3, start=9)
    again.verify()
    assert verify_chain(again.entries()) == again.chain_head


@pytest.mark.parametrize("i", [0, 3, 7])
def test_reload_refuses_a_broken_chain(i):
    store = InMemoryLedgerStore()
    ledger = Ledger(store)
    entries = fill(ledger, 9)
    rows = store.entries()
    rows[i] = encode_entry(edited(entries[i]))
    with pytest.raises(LedgerTampered) as info:
        Ledger(InMemoryLedgerStore(rows))
    assert info.value.index == i + 1
    rows[i] = msgspec.msgpack.encode(entries[i])  # payload keys unsorted: not canonical
    assert rows[i] != encode_entry(entries[i])
    assert msgspec.msgpack.decode(rows[i]) == msgspec.msgpack.decode(encode_entry(entries[i]))
    with pytest.raises(LedgerTampered) as info:
        Ledger(InMemoryLedgerStore(rows))
    assert info.value.index == i


def test_a_stale_second_writer_catches_up_before_appending():
    store = InMemoryLedgerStore()
    a, b = Ledger(store), Ledger(store)
    fill(a, 4)
    entry = b.append("enroll", "node-1", {}, 200.0)  # b syncs first, then appends at index 4
    assert entry.index == 4
    assert a.sync() == 1
    assert (b.root(), b.chain_head) == (a.root(), a.chain_head)
    a.verify()


def test_a_write_racing_in_after_the_sync_conflicts_and_writes_nothing():
    class Racy(InMemoryLedgerStore):
        rival: Ledger | None = None

        def append_entry(self, index, data):
            if self.rival is not None:  # another writer wins the race once
                rival, self.rival = self.rival, None
                rival.append("enroll", "rival", {}, 150.0)
            super().append_entry(index, data)

    store = Racy()
    a, b = Ledger(store), Ledger(store)
    fill(a, 2)
    store.rival = a
    with pytest.raises(LedgerConflict):
        b.append("enroll", "node-1", {}, 200.0)
    assert store.size() == 3
    assert b.sync() == 1 and b.size == 3  # it sees the rival's entry
    assert b.append("enroll", "node-1", {}, 201.0).index == 3
    a.sync()
    a.verify()


def test_refused_appends_write_nothing():
    store = ListStore()
    ledger = Ledger(store)
    fill(ledger, 2)
    before = (ledger.size, ledger.root(), ledger.chain_head, store.size())
    for payload in ({"blob": b"\x00"}, {"password": "hunter2"}, {"x": float("nan")}):
        with pytest.raises(InvalidEntry):
            ledger.append("enroll", "node-1", payload, 300.0)
    with pytest.raises(InvalidEntry):
        ledger.append("Not A Kind", "node-1", None, 300.0)
    assert (ledger.size, ledger.root(), ledger.chain_head, store.size()) == before


def test_store_failure_leaves_the_ledger_unchanged():
    class Broken(ListStore):
        def append_entry(self, index, data):
            raise OSError("disk full")

    ledger = Ledger(Broken())
    with pytest.raises(OSError, match="disk full"):
        ledger.append("enroll", "node-1", {}, 1.0)
    assert (ledger.size, ledger.chain_head) == (0, GENESIS_HASH)


def test_stores_satisfy_the_protocol():
    assert isinstance(InMemoryLedgerStore(), LedgerStore)
    assert isinstance(ListStore(), LedgerStore)
    with pytest.raises(LedgerConflict):
        InMemoryLedgerStore().append_entry(1, b"x")


def test_heads_and_inclusion_proofs(signer, other_signer):
    ledger = Ledger()
    entries = fill(ledger, 13)
    sth = ledger.head(signer, now=500.0)
    verify_tree_head(sth, signer.public_key)
    assert (sth.tree_size, sth.root_hash, sth.timestamp) == (13, ledger.root(), 500.0)
    for e in entries:
        verify_entry_in_head(e, ledger.inclusion_proof(e.index), sth, signer.public_key)
    proof = ledger.inclusion_proof(4)
    with pytest.raises(InvalidProof, match="another entry"):
        verify_entry_in_head(entries[5], proof, sth, signer.public_key)
    with pytest.raises(InvalidProof, match="not in the tree"):
        verify_entry_in_head(edited(entries[4]), proof, sth, signer.public_key)
    with pytest.raises(InvalidTreeHead, match="bad signature"):
        verify_entry_in_head(entries[4], proof, sth, other_signer.public_key)


def test_hundred_thousand_entries_stay_fast():
    store = InMemoryLedgerStore()
    ledger = Ledger(store)
    for i in range(100_000):
        ledger.append("model_update", "server", {"round": i}, float(i))
    root = ledger.root()
    for m in (1, 4_097, 65_536, 99_999):
        assert ledger.consistency_proof(m).new_size == 100_000
        assert ledger.inclusion_proof(m - 1).tree_size == 100_000
    ledger.verify()
    assert Ledger(InMemoryLedgerStore(store.entries())).root() == root
