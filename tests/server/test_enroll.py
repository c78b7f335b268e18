"""``POST /v1/enroll`` over SQLite and PostgreSQL: the server relays to the enrollment authority.

Every refusal is a specific 4xx (or 503 when the authority is away) and writes nothing; the
server stores and audits only certificates that the pinned authority signed for the exact keys.
"""

from __future__ import annotations

import math
import threading

import httpx
import msgspec
import pytest
from fastapi.testclient import TestClient

from qflare.authority import AuthoritySettings, init_authority
from qflare.authority.app import create_authority_app
from qflare.crypto import SignatureScheme, SystemRng
from qflare.ledger import Ledger
from qflare.protocol.identity import (
    CertificateBody,
    certificate_digest,
    decode_authority_key,
    issue_certificate,
    parse_certificate,
    verify_certificate,
)
from qflare.protocol.wire import EnrollRequest, IssuedCertificate
from qflare.server.authority_client import AuthorityUnavailableError, HttpAuthorityClient
from qflare.store.models import AuditRow, Device
from qflare.store.repos import SqlLedgerStore
from tests.authority.helpers import request_for, token_with
from tests.server.conftest import Harness
from tests.server.helpers import MSGPACK, code, encode


def _nothing_stored(server: Harness) -> bool:
    return server.count(Device) == 0 and server.count(AuditRow) == 0


def test_enroll_stores_the_certificate_and_audits_it(server: Harness):
    dev = server.device()
    token = server.token(label="edge-1")
    assert dev.enroll(token).status_code == 201
    reply = dev.reply
    assert reply is not None and dev.server_pk == server.ctx.identity.public_key
    assert decode_authority_key(reply.authority) == server.authority.keys.public
    body = verify_certificate(reply.certificate, server.authority.keys.public)
    assert (body.identity_pk, body.kem_pk, body.device_id) == (
        dev.signer.public_key,
        dev.kem_pk,
        dev.device_id,
    )
    with server.ctx.factory() as db:
        row = db.get(Device, dev.device_id)
        assert row is not None and row.certificate == reply.certificate
        assert row.client_index == reply.client_index == 0 and row.revoked_at is None
    assert server.authority.token_row(token).device_id == dev.device_id
    (entry,) = Ledger(SqlLedgerStore(server.ctx.factory)).entries()
    assert (entry.kind, entry.actor) == ("enroll", "server")
    assert entry.payload == {
        "device": dev.device_id,
        "serial": 1,
        "client_index": 0,
        "certificate_sha256": certificate_digest(reply.certificate).hex(),
    }


def test_enroll_with_mldsa65_identity(start_server):
    server = start_server(signature_scheme="mldsa65")
    dev = server.enrolled(SignatureScheme.MLDSA65)
    session = dev.open_session()
    assert dev.poll(session).status_code == 204


def test_token_reuse_is_409_but_a_retry_is_answered_again(server: Harness):
    token = server.token()
    dev = server.device()
    assert dev.enroll(token).status_code == 201
    first = dev.reply
    assert dev.enroll(token).status_code == 201  # the same keys: the answer was lost, say
    assert dev.reply == first
    resp = server.device().enroll(token)
    assert resp.status_code == 409 and code(resp) == "token_used"
    assert server.count(Device) == 1 and server.count(AuditRow) == 1


@pytest.mark.parametrize(
    ("kind", "status", "expected"),
    [("expired", 410, "token_expired"), ("revoked", 403, "token_revoked")],
)
def test_dead_token_is_refused_and_stays_unused(server: Harness, kind, status, expected):
    token = server.token(**{kind: True})
    resp = server.device().enroll(token)
    assert resp.status_code == status and code(resp) == expected
    assert _nothing_stored(server)
    row = server.authority.token_row(token)
    assert row.used_at is None and row.device_id is None


def test_tokens_the_server_could_forge_are_refused(server: Harness, tmp_path):
    """A server (or anyone) without the authority key cannot mint a token the authority takes."""
    rogue = init_authority(tmp_path / "rogue", SystemRng())
    ours = server.authority.keys.public.fingerprint
    cases = [
        (token_with(rogue.signer, ours, expires_at=4e9), 401, "token_forged"),
        (
            token_with(rogue.signer, rogue.public.fingerprint, expires_at=4e9),
            401,
            "wrong_authority",
        ),
        (token_with(server.authority.keys.signer, ours, expires_at=math.nan), 400, "bad_token"),
    ]
    for token, status, expected in cases:
        resp = server.device().enroll(token)
        assert (resp.status_code, code(resp)) == (status, expected)
    assert _nothing_stored(server) and server.authority.service.certificates() == []


def test_a_relay_that_swaps_in_its_own_keys_gets_nothing(server: Harness):
    """The request a server relays is bound to the device's keys by the token secret it never sees."""
    token = server.token()
    victim, mallory = server.device(), server.device()
    seen = victim.enroll_request(token)
    swapped = msgspec.structs.replace(
        seen, identity_pk=mallory.signer.public_key, kem_pk=mallory.kem_pk
    )
    resp = mallory.post_enroll(swapped)
    assert resp.status_code == 401 and code(resp) == "bad_proof"
    assert _nothing_stored(server)
    assert victim.post_enroll(seen).status_code == 201  # the token still works for its holder


def test_garbage_claims_are_400(server: Harness):
    resp = server.client.post(
        "/v1/enroll",
        content=encode(
            {"claims": b"x", "signature": b"", "proof": b"", "identity_pk": b"", "kem_pk": b""}
        ),
        headers=MSGPACK,
    )
    assert resp.status_code == 400
    assert _nothing_stored(server)


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
    assert server.authority.token_row(token).device_id in {d.device_id for d in devices}


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


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # never-used msgpack byte
        b"\x93\x01\x02",  # truncated array
        encode({"token": "t"}),  # the old request shape
        encode([1, 2, 3]),  # wrong shape
        encode({"claims": 5, "signature": b"", "proof": b"", "identity_pk": b"", "kem_pk": b""}),
        b'{"claims": "json is not msgpack"}',
    ],
    ids=["reserved-byte", "truncated", "old-shape", "array", "wrong-types", "json"],
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
    server = start_server(body_limit_enroll=6000)
    token = server.token()
    body = encode(server.device().enroll_request(token))  # about 4.8 kB: keys and a signature
    padded = body + b"\0" * 6000
    resp = server.client.post("/v1/enroll", content=padded, headers=MSGPACK)
    assert resp.status_code == 413
    chunks = iter([padded[:6000], padded[6000:]])  # no Content-Length: counted while reading
    resp = server.client.post("/v1/enroll", content=chunks, headers=MSGPACK)
    assert resp.status_code == 413
    assert server.count(Device) == 0
    assert server.device().enroll(token).status_code == 201


def test_without_an_authority_enrollment_is_disabled(start_server):
    server = start_server(authority_key=None)
    resp = server.device().enroll(server.token())
    assert resp.status_code == 503 and code(resp) == "enrollment_disabled"
    assert _nothing_stored(server)


class _Down:
    def issue(self, request: EnrollRequest) -> IssuedCertificate:
        raise AuthorityUnavailableError("ConnectError talking to the authority")


def test_an_unreachable_authority_is_503_and_loses_nothing(start_server, authority):
    server = start_server(authority_client=_Down())
    token = server.token()
    dev = server.device()
    resp = dev.enroll(token)
    assert resp.status_code == 503 and code(resp) == "authority_unavailable"
    assert int(resp.headers["retry-after"]) > 0
    assert _nothing_stored(server) and authority.token_row(token).status(0) == "live"
    assert authority.service.issue(dev.enroll_request(token)).client_index == 0  # still usable


class _Liar:
    """An authority answer the server must not believe."""

    def __init__(self, harness_authority, *, other_keys: bool) -> None:
        self.auth, self.other_keys = harness_authority, other_keys

    def issue(self, request: EnrollRequest) -> IssuedCertificate:
        honest = self.auth.service.issue(request)
        body = parse_certificate(honest.certificate)
        if self.other_keys:
            body = msgspec.structs.replace(body, identity_pk=b"\5" * len(body.identity_pk))
            signer = self.auth.keys.signer
        else:
            signer = init_authority(self.auth.directory.parent / "liar", SystemRng()).signer
        forged = issue_certificate(signer, CertificateBody(**msgspec.structs.asdict(body)))
        return msgspec.structs.replace(honest, certificate=forged)


@pytest.mark.parametrize("other_keys", [True, False], ids=["other-keys", "other-signer"])
def test_a_certificate_the_pinned_authority_did_not_sign_for_these_keys_is_refused(
    start_server, authority, other_keys
):
    server = start_server(authority_client=_Liar(authority, other_keys=other_keys))
    resp = server.device().enroll(server.token())
    assert resp.status_code == 502 and code(resp) == "bad_certificate"
    assert _nothing_stored(server)


@pytest.fixture
def authority_app(authority):
    """The real authority app, in-process (its lifespan entered)."""
    with TestClient(create_authority_app(AuthoritySettings(dir=authority.directory))) as client:
        yield client


def _over_http(app_client: TestClient, answer: httpx.Response | None = None) -> HttpAuthorityClient:
    """The HTTP client, talking to the authority app (or getting ``answer``, or a timeout)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if answer is not None:
            return answer
        r = app_client.post(
            request.url.path, content=request.content, headers=dict(request.headers)
        )
        return httpx.Response(r.status_code, headers=r.headers, content=r.content)

    return HttpAuthorityClient("http://authority.test", transport=httpx.MockTransport(handler))


def test_the_http_authority_client_relays_and_maps_refusals(start_server, authority_app):
    server = start_server(authority_client=_over_http(authority_app))
    token = server.token()
    assert server.device().enroll(token).status_code == 201
    used = server.device().enroll(token)
    assert (used.status_code, code(used)) == (409, "token_used")


@pytest.mark.parametrize(
    "answer",
    [httpx.Response(500, text="oops"), httpx.Response(201, content=b"\xc1"), None],
    ids=["500", "garbage", "timeout"],
)
def test_the_http_authority_client_reports_failures_as_unavailable(authority, answer):
    def handler(request: httpx.Request) -> httpx.Response:
        if answer is None:
            raise httpx.ReadTimeout("slow", request=request)
        return answer

    client = HttpAuthorityClient("http://authority.test", transport=httpx.MockTransport(handler))
    request = request_for(authority.token())
    with pytest.raises(AuthorityUnavailableError):
        client.issue(request)
    client.close()
    with pytest.raises(ValueError, match="authority_url"):
        HttpAuthorityClient("ftp://authority.test")
