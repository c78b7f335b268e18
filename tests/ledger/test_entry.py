"""Audit entries: validation, canonical encoding, and refusal of secrets."""

import math

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qflare.crypto import SecretBytes
from qflare.ledger import (
    GENESIS_HASH,
    AuditEntry,
    EntryKind,
    InvalidEntry,
    decode_entry,
    encode_entry,
)

names = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).filter(
    lambda k: k not in {"token", "key", "seed"} and "secret" not in k and "private" not in k
)
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
payloads = st.dictionaries(names, values, max_size=8)


def make(**changes):
    fields = {
        "index": 0,
        "timestamp": 1_700_000_000.25,
        "kind": EntryKind.ENROLL,
        "actor": "node-7",
        "payload": {"node_id": 7, "scheme": "mldsa65"},
        "prev_hash": GENESIS_HASH,
    }
    return AuditEntry(**{**fields, **changes})


@given(payloads, st.floats(0, 4e9), st.integers(0, 2**40))
def test_round_trip_is_exact_and_canonical(payload, ts, index):
    entry = make(payload=payload, timestamp=ts, index=index)
    data = encode_entry(entry)
    back = decode_entry(data)
    assert back == entry
    assert encode_entry(back) == data
    for k, v in payload.items():
        assert type(back.payload[k]) is type(v)


def test_payload_key_order_does_not_change_the_bytes():
    a = make(payload={"a": 1, "b": "x", "c": None})
    b = make(payload={"c": None, "b": "x", "a": 1})
    assert encode_entry(a) == encode_entry(b)


@pytest.mark.parametrize(
    "raw",
    [
        # payload keys in non-sorted order
        msgspec.msgpack.encode(
            {"version": 1, "index": 0, "timestamp": 1.0, "kind": "enroll", "actor": "a",
             "payload": {"b": 1, "a": 2}, "prev_hash": GENESIS_HASH}
        ),
        # integer timestamp (a second spelling of 1.0)
        msgspec.msgpack.encode(
            {"version": 1, "index": 0, "timestamp": 1, "kind": "enroll", "actor": "a",
             "payload": {}, "prev_hash": GENESIS_HASH}
        ),
        # unknown field
        msgspec.msgpack.encode(
            {"version": 1, "index": 0, "timestamp": 1.0, "kind": "enroll", "actor": "a",
             "payload": {}, "prev_hash": GENESIS_HASH, "extra": 1}
        ),
        encode_entry(make()) + b"\x00",
        encode_entry(make())[:-3],
        b"",
    ],
)  # fmt: skip
def test_decode_refuses_non_canonical_or_malformed_bytes(raw):
    with pytest.raises(InvalidEntry):
        decode_entry(raw)


@pytest.mark.parametrize(
    "changes",
    [
        {"index": -1},
        {"timestamp": math.nan},
        {"timestamp": math.inf},
        {"timestamp": -1.0},
        {"kind": "Enroll"},
        {"kind": ""},
        {"kind": "x" * 65},
        {"actor": ""},
        {"actor": "a\nb"},
        {"actor": "a" * 257},
        {"prev_hash": b"\x00" * 31},
        {"version": 2},
        {"payload": {"blob": b"\x01\x02"}},
        {"payload": {"nested": {"a": 1}}},
        {"payload": {"items": [1, 2]}},
        {"payload": {"seed": SecretBytes(b"k" * 32)}},
        {"payload": {"x": math.nan}},
        {"payload": {"x": 2**64}},
        {"payload": {"x": "y" * 4097}},
        {"payload": {"Bad-Key": 1}},
        {"payload": {f"k{i}": i for i in range(65)}},
    ],
)
def test_malformed_entries_are_refused(changes):
    with pytest.raises(InvalidEntry):
        make(**changes)


@pytest.mark.parametrize(
    "key", ["secret", "client_secret", "password", "private_key", "privkey", "token", "key", "seed"]
)
def test_keys_that_name_secrets_are_refused(key):
    with pytest.raises(InvalidEntry, match="secret"):
        make(payload={key: "x"})


def test_public_identifiers_are_fine():
    entry = make(payload={"token_id": "t-1", "key_fingerprint": "ab12", "graph_seed_hex": "00"})
    assert decode_entry(encode_entry(entry)) == entry


def test_replace_revalidates():
    with pytest.raises(InvalidEntry):
        msgspec.structs.replace(make(), kind="DROP TABLE")
