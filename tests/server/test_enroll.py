"""``POST /v1/enroll`` over SQLite and PostgreSQL: every refusal is a specific 4xx and writes nothing."""

from __future__ import annotations

import threading

import msgspec
import pytest

from qflare.crypto import SignatureScheme
from qflare.ledger import Ledger
from qflare.store.models import AuditRow, Device, EnrollmentToken
from qflare.store.repos import SqlLedgerStore
from tests.server.conftest import Harness
from tests.server.helpers import MSGPACK, code, encode


def _token_row(server: Harness) -> EnrollmentToken:
    with server.ctx.factory() as db:
        rows = db.query(EnrollmentToken).all()
    assert len(rows) == 1
    return rows[0]


def test_enroll_registers_keys_and_audits(server: Harness):
    dev = server.device()
    resp = dev.enroll(server.token(label="edge-1"))
    assert resp.status_code == 201
    assert resp.headers["content-type"] == "application/msgpack"
    assert dev.server_pk == server.ctx.identity.public_key
    with server.ctx.factory() as db:
        row = db.get(Device, dev.device_id)
        assert row is not None and row.identity_pk == dev.signer.public_key
        assert row.kem_pk == dev.kem_pk and row.revoked_at is None
    token = _token_row(server)
    assert token.used_at is not None and token.device_id == dev.device_id
    entries = Ledger(SqlLedgerStore(server.ctx.factory)).entries()
    assert [(e.kind, e.payload) for e in entries] == [("enroll", {"device": dev.device_id})]


def test_enroll_with_mldsa65_identity(start_server):
    server = start_server(signature_scheme="mldsa65")
    dev = server.enrolled(SignatureScheme.MLDSA65)
    session = dev.open_session()
    assert dev.poll(session).status_code == 204


def test_token_reuse_is_409_and_adds_no_device(server: Harness):
    token = server.token()
    assert server.device().enroll(token).status_code == 201
    resp = server.device().enroll(token)
    assert resp.status_code == 409 and code(resp) == "token_used"
    assert server.count(Device) == 1
    assert server.count(AuditRow) == 1


@pytest.mark.parametrize(
    ("kind", "status", "expected"),
    [("expired", 410, "token_expired"), ("revoked", 403, "token_revoked")],
)
def test_dead_token_is_refused_and_stays_unused(server: Harness, kind, status, expected):
    token = server.token(ttl=-1.0) if kind == "expired" else server.token(revoked=True)
    resp = server.device().enroll(token)
    assert resp.status_code == status and code(resp) == expected
    assert server.count(Device) == 0 and server.count(AuditRow) == 0
    row = _token_row(server)
    assert row.used_at is None and row.device_id is None


def test_unknown_token_is_401(server: Harness):
    server.token()
    resp = server.device().enroll("qft_" + "A" * 43)
    assert resp.status_code == 401 and code(resp) == "token_unknown"
    assert server.count(Device) == 0
    assert _token_row(server).used_at is None


def test_concurrent_enrollments_with_one_token_admit_exactly_one(server: Harness):
    token = server.token()
    devices = [server.device() for _ in range(4)]
    barrier = threading.Barrier(len(devices))
    statuses: list[int] = []

    def run(dev):
        barrier.wait()
        statuses.append(dev.enroll(token).status_code)

    threads = [threading.Thread(target=run, args=(d,)) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [201, 409, 409, 409]
    assert server.count(Device) == 1
    assert _token_row(server).device_id in {d.device_id for d in devices}


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("identity_pk", b"\1" * 31, "bad_identity_key"),
        ("identity_pk", b"", "bad_identity_key"),
        ("kem_pk", b"\2" * 1184, "bad_kem_key"),
        ("kem_pk", b"\2" * 1217, "bad_kem_key"),
        ("scheme", "mldsa65", "wrong_scheme"),
        ("scheme", "rsa", "wrong_scheme"),
    ],
    ids=["id-short", "id-empty", "kem-no-x25519", "kem-long", "scheme-other", "scheme-unknown"],
)
def test_bad_keys_are_400_and_keep_the_token(server: Harness, field, value, expected):
    token = server.token()
    dev = server.device()
    resp = dev.enroll(token, **{field: value})
    assert resp.status_code == 400 and code(resp) == expected
    assert server.count(Device) == 0
    assert dev.enroll(token).status_code == 201  # the refused attempt did not burn the token


def test_overlong_token_is_400(server: Harness):
    resp = server.device().enroll("x" * 201)
    assert resp.status_code == 400 and code(resp) == "bad_token"


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # never-used msgpack byte
        b"\x93\x01\x02",  # truncated array
        encode({"token": "t"}),  # missing fields
        encode([1, 2, 3]),  # wrong shape
        encode({"token": 5, "identity_pk": b"", "kem_pk": b""}),  # wrong types
        b'{"token": "json is not msgpack"}',
    ],
    ids=["reserved-byte", "truncated", "missing-fields", "array", "wrong-types", "json"],
)
def test_malformed_msgpack_is_400(server: Harness, body):
    token = server.token()
    resp = server.client.post("/v1/enroll", content=body, headers=MSGPACK)
    assert resp.status_code == 400 and code(resp) == "malformed_message"
    assert server.count(Device) == 0
    assert server.device().enroll(token).status_code == 201


def test_unknown_field_is_400(server: Harness):
    dev = server.device()
    fields = msgspec.structs.asdict(dev.enroll_request(server.token())) | {"admin": True}
    resp = server.client.post("/v1/enroll", content=encode(fields), headers=MSGPACK)
    assert resp.status_code == 400


def test_empty_body_is_400(server: Harness):
    resp = server.client.post("/v1/enroll", content=b"", headers=MSGPACK)
    assert resp.status_code == 400


def test_oversized_body_is_413_declared_or_streamed(start_server):
    server = start_server(body_limit_enroll=4096)
    token = server.token()
    body = encode(server.device().enroll_request(token))  # about 1.3 kB of keys
    padded = body + b"\0" * 4096
    resp = server.client.post("/v1/enroll", content=padded, headers=MSGPACK)
    assert resp.status_code == 413
    chunks = iter([padded[:2048], padded[2048:]])  # no Content-Length: counted while reading
    resp = server.client.post("/v1/enroll", content=chunks, headers=MSGPACK)
    assert resp.status_code == 413
    assert server.count(Device) == 0
    assert server.device().enroll(token).status_code == 201
