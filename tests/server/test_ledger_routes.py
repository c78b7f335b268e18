"""GET /v1/ledger/head, /entries, /consistency: what nodes and auditors read (SQLite, no witnesses)."""

from collections.abc import Iterator

import msgspec
import pytest
from fastapi.testclient import TestClient

from qflare.ledger import (
    ConsistencyProof,
    Ledger,
    MerkleTree,
    decode_entry,
    encode_entry,
    verify_consistency,
    verify_tree_head,
)
from qflare.ledger.wire import MAX_PAGE, MSGPACK, EntryPage, HeadReply
from qflare.server.app import create_app
from qflare.store.db import make_engine, migrate, session_factory
from qflare.store.models import AuditRow
from tests.server.conftest import make_settings
from tests.server.helpers import code

MP = {"accept": MSGPACK}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One server for the module (the tests only read): a ledger of a page and a bit."""
    tmp_path = tmp_path_factory.mktemp("ledger-routes")
    url = f"sqlite:///{tmp_path}/db.sqlite"
    history = Ledger()
    for i in range(MAX_PAGE + 5):
        history.append("round_complete", "server", {"round": i}, 100.0 + i)
    engine = make_engine(url)
    migrate(engine)
    with session_factory(engine)() as db, db.begin():  # one transaction, not 1005
        db.add_all(AuditRow(index=e.index, data=encode_entry(e)) for e in history.entries())
    engine.dispose()
    with TestClient(create_app(make_settings(url, tmp_path, rate_per_ip=1e9))) as client:
        yield client


def test_head_json_keeps_the_old_fields_and_adds_cosignatures(client: TestClient):
    body = client.get("/v1/ledger/head").json()
    ctx = client.app.state.ctx
    assert body["tree_size"] == ctx.ledger.size
    assert body["root_hash"] == ctx.ledger.root().hex()
    assert body["scheme"] == "mldsa65"
    assert {"timestamp", "signature"} <= set(body)
    assert body["cosignatures"] == []  # no witnesses configured
    assert body["server_public_key"] == ctx.identity.public_key.hex()


def test_head_msgpack_verifies_with_the_server_key(client: TestClient):
    resp = client.get("/v1/ledger/head", headers=MP)
    assert resp.headers["content-type"] == MSGPACK
    reply = msgspec.msgpack.decode(resp.content, type=HeadReply)
    verify_tree_head(reply.head.sth, client.app.state.ctx.identity.public_key)


def test_entries_pages_hash_to_the_signed_root(client: TestClient):
    ctx = client.app.state.ctx
    size = ctx.ledger.size
    first = msgspec.msgpack.decode(
        client.get("/v1/ledger/entries", headers=MP).content, type=EntryPage
    )
    assert (first.start, first.tree_size, len(first.entries)) == (0, size, MAX_PAGE)
    rest = client.get("/v1/ledger/entries", params={"start": MAX_PAGE}, headers=MP)
    second = msgspec.msgpack.decode(rest.content, type=EntryPage)
    tree = MerkleTree()
    for data in first.entries + second.entries:
        tree.append(data)
        decode_entry(data)  # canonical bytes
    assert tree.size == size and tree.root() == ctx.ledger.root()
    view = client.get("/v1/ledger/entries", params={"start": 2, "end": 4}).json()
    assert view["start"] == 2 and len(view["entries"]) == 2
    assert bytes.fromhex(view["entries"][0]) == first.entries[2]
    empty = client.get("/v1/ledger/entries", params={"start": size}, headers=MP)
    assert msgspec.msgpack.decode(empty.content, type=EntryPage).entries == ()


def test_consistency_proofs_verify(client: TestClient):
    ledger = client.app.state.ctx.ledger
    for first, second in [(0, 7), (3, 7), (7, 7), (5, ledger.size)]:
        params = {"first": first, "second": second}
        resp = client.get("/v1/ledger/consistency", params=params, headers=MP)
        proof = msgspec.msgpack.decode(resp.content, type=ConsistencyProof)
        verify_consistency(proof, ledger.root(first), ledger.root(second))
    view = client.get("/v1/ledger/consistency", params={"first": 3, "second": 7}).json()
    assert (view["old_size"], view["new_size"]) == (3, 7)
    assert all(len(bytes.fromhex(h)) == 32 for h in view["path"])


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/v1/ledger/entries", {"start": 10, "end": 5}, 400),
        ("/v1/ledger/entries", {"start": 0, "end": MAX_PAGE + 1}, 400),
        ("/v1/ledger/entries", {"start": 10**6}, 400),
        ("/v1/ledger/entries", {"start": 0, "end": 10**6}, 400),
        ("/v1/ledger/entries", {"start": -1}, 422),
        ("/v1/ledger/entries", {"start": "x"}, 422),
        ("/v1/ledger/entries", {"start": 2**70}, 422),
        ("/v1/ledger/consistency", {"first": 5, "second": 4}, 400),
        ("/v1/ledger/consistency", {"first": 0, "second": 10**6}, 400),
        ("/v1/ledger/consistency", {"first": -3, "second": 4}, 422),
        ("/v1/ledger/consistency", {"first": 1}, 422),
    ],
)
def test_bad_ranges_are_client_errors(client: TestClient, path, params, status):
    resp = client.get(path, params=params)
    assert resp.status_code == status, resp.text
    if status == 400:
        assert code(resp) == "bad_range"
