"""HttpApi: URL policy, problem+json decoding into typed errors, endpoint encoding."""

from __future__ import annotations

import httpx
import msgspec
import pytest

from qflare.crypto import SignatureScheme, SystemRng
from qflare.node import (
    ConflictError,
    ForbiddenError,
    HttpApi,
    MalformedResponseError,
    NetworkError,
    NodeState,
    RateLimitedError,
    ServerError,
    ServerUnavailableError,
    UnauthorizedError,
    enroll,
)
from qflare.node.transport import check_server_url, error_from_response
from qflare.protocol.wire import EnrollRequest, EnrollResponse, SealedFrame

PROBLEM = {"Content-Type": "application/problem+json"}


def _request(claims: bytes = b"t") -> EnrollRequest:
    return EnrollRequest(claims=claims, signature=b"s", proof=b"p", identity_pk=b"i", kem_pk=b"k")


def _problem(status: int, code: str | None, detail: str = "why") -> httpx.Response:
    body = {"type": "about:blank", "title": "t", "status": status, "detail": detail}
    if code:
        body["code"] = code
    return httpx.Response(status, json=body, headers=PROBLEM)


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (401, "token_unknown", UnauthorizedError),
        (403, "token_revoked", ForbiddenError),
        (409, "token_used", ConflictError),
        (410, "token_expired", ServerError),
        (413, None, ServerError),
        (429, None, RateLimitedError),
        (500, "internal", ServerUnavailableError),
        (503, "too_many_polls", ServerUnavailableError),
    ],
)
def test_problem_json_becomes_a_typed_error_keeping_the_code(status, code, kind):
    err = error_from_response(_problem(status, code, "the detail"))
    assert type(err) is kind
    assert (err.status, err.code, err.detail) == (status, code or "", "the detail")


def test_non_json_error_body_still_gives_status():
    err = error_from_response(httpx.Response(502, text="<html>bad gateway</html>"))
    assert isinstance(err, ServerUnavailableError) and err.code == "" and err.status == 502


@pytest.mark.parametrize(
    ("url", "insecure", "ok"),
    [
        ("https://fl.example.org:8443/", False, True),
        ("http://127.0.0.1:8000", True, True),
        ("http://127.0.0.1:8000", False, False),
        ("ftp://x", True, False),
        ("https://", False, False),
    ],
)
def test_plain_http_needs_insecure(url, insecure, ok):
    if ok:
        assert not check_server_url(url, insecure=insecure).endswith("/")
    else:
        with pytest.raises(ValueError):
            check_server_url(url, insecure=insecure)


def _api(handler) -> HttpApi:
    return HttpApi("http://server.test", insecure=True, transport=httpx.MockTransport(handler))


def test_enroll_sends_msgpack_and_decodes_the_answer():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["path"], seen["type"] = request.url.path, request.headers["content-type"]
        req = msgspec.msgpack.decode(request.content, type=EnrollRequest)
        seen["claims"] = req.claims
        body = EnrollResponse(
            device_id="d1",
            client_index=0,
            certificate=b"c",
            authority=b"a",
            server_public_key=b"k",
            server_scheme="mldsa65",
        )
        return httpx.Response(201, content=msgspec.msgpack.encode(body))

    with _api(handler) as api:
        resp = api.enroll(_request(b"claims"))
    assert resp.device_id == "d1"
    assert seen == {"path": "/v1/enroll", "type": "application/msgpack", "claims": b"claims"}


def test_poll_sends_session_headers_and_handles_204():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(request.headers)
        seen["wait"] = request.url.params["wait"]
        if seen.get("x-qflare-seq") == "1":
            return httpx.Response(204)
        frame = SealedFrame(session_id="s", seq=1, ciphertext=b"c")
        return httpx.Response(200, content=msgspec.msgpack.encode(frame))

    with _api(handler) as api:
        assert api.poll("s", 1, "QUJD", 2.5) is None
        assert (seen["x-qflare-session"], seen["x-qflare-auth"], seen["wait"]) == (
            "s",
            "QUJD",
            "2.5",
        )
        assert api.poll("s", 2, "QUJD", 0).ciphertext == b"c"


def test_wrong_status_garbage_body_and_network_failure():
    def ok_but_garbage(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, content=b"\xc1")

    with _api(ok_but_garbage) as api, pytest.raises(MalformedResponseError):
        api.enroll(_request())

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with _api(refuse) as api, pytest.raises(NetworkError, match="ConnectError"):
        api.post_result(SealedFrame(session_id="s", seq=1, ciphertext=b"c"))

    def gone(request: httpx.Request) -> httpx.Response:
        return _problem(410, "token_expired")

    with _api(gone) as api, pytest.raises(ServerError) as err:
        api.enroll(_request())
    assert err.value.code == "token_expired"


def test_missing_ca_file_fails_early(tmp_path):
    with pytest.raises(OSError):
        HttpApi("https://fl.example.org", ca=tmp_path / "missing.pem")


def test_tls_server_is_trusted_only_with_its_ca(tls_server, tmp_path):
    assert tls_server.url.startswith("https://") and tls_server.ca is not None
    with HttpApi(tls_server.url) as api, pytest.raises(NetworkError, match="CERTIFICATE_VERIFY"):
        api.health()
    with HttpApi(tls_server.url, ca=tls_server.ca) as api:
        assert api.health()["status"] == "ok"
        enroll(
            tmp_path / "node",
            api,
            tls_server.new_token(),
            scheme=SignatureScheme.ED25519,
            rng=SystemRng(),
            ca_pem=tls_server.ca.read_bytes(),
        )
    state = NodeState.open(tmp_path / "node")
    assert state.ca_file is not None and state.ca_file.read_bytes() == tls_server.ca.read_bytes()
