"""``POST /v1/certificates`` over HTTP: msgpack in and out, problem+json refusals with codes."""

from __future__ import annotations

import msgspec
from fastapi.testclient import TestClient

from qflare.authority import AuthoritySettings
from qflare.authority.app import create_authority_app
from qflare.protocol.wire import IssuedCertificate
from tests.authority.helpers import TestAuthority, request_for

MSGPACK = {"content-type": "application/msgpack"}


def _client(authority: TestAuthority, **overrides: object) -> TestClient:
    settings = AuthoritySettings(dir=authority.directory, **overrides)  # type: ignore[arg-type]
    return TestClient(create_authority_app(settings))


def test_certificates_endpoint(authority: TestAuthority):
    token = authority.token()
    with _client(authority) as http:
        health = http.get("/v1/health").json()
        assert health["authority_sha256"] == authority.keys.public.fingerprint.hex()
        body = msgspec.msgpack.encode(request_for(token))
        ok = http.post("/v1/certificates", content=body, headers=MSGPACK)
        assert ok.status_code == 201 and ok.headers["content-type"] == "application/msgpack"
        issued = msgspec.msgpack.decode(ok.content, type=IssuedCertificate)
        assert issued.client_index == 0
        again = http.post(
            "/v1/certificates", content=msgspec.msgpack.encode(request_for(token)), headers=MSGPACK
        )
        assert again.status_code == 409
        assert again.headers["content-type"].startswith("application/problem+json")
        assert again.json()["code"] == "token_used"
        bad = http.post("/v1/certificates", content=b"\xc1", headers=MSGPACK)
        assert (bad.status_code, bad.json()["code"]) == (400, "malformed_message")


def test_oversized_bodies_are_413(authority: TestAuthority):
    with _client(authority, body_limit=2048) as http:
        body = msgspec.msgpack.encode(request_for(authority.token()))
        assert http.post("/v1/certificates", content=body, headers=MSGPACK).status_code == 413
    assert authority.service.certificates() == []
