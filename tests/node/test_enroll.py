"""``enroll`` believes only an answer from the token's authority that certifies its own keys."""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec
import pytest

from qflare.crypto import SignatureScheme, SystemRng
from qflare.node import EnrollmentRejectedError, HttpApi, InvalidTokenError, NodeState, enroll
from qflare.protocol.identity import (
    encode_authority_key,
    enrollment_proof,
    parse_token,
    verify_certificate,
)
from qflare.protocol.wire import EnrollRequest, EnrollResponse, IssuedCertificate
from tests.authority.helpers import TestAuthority, make_authority, request_for


@pytest.fixture
def authority(tmp_path: Path):
    auth = make_authority(tmp_path / "authority")
    yield auth
    auth.close()


def _server(issue) -> HttpApi:
    """A server that answers with whatever ``issue`` makes of the node's request."""

    def handler(request: httpx.Request) -> httpx.Response:
        req = msgspec.msgpack.decode(request.content, type=EnrollRequest)
        issued = issue(req)
        body = EnrollResponse(
            device_id=issued.device_id,
            client_index=issued.client_index,
            certificate=issued.certificate,
            authority=issued.authority,
            server_public_key=b"\1" * 1952,
            server_scheme="mldsa65",
        )
        return httpx.Response(201, content=msgspec.msgpack.encode(body))

    return HttpApi("http://server.test", insecure=True, transport=httpx.MockTransport(handler))


def _enroll(root: Path, api: HttpApi, token: str):
    return enroll(root, api, token, scheme=SignatureScheme.ED25519, rng=SystemRng())


def test_an_honest_answer_is_pinned(authority: TestAuthority, tmp_path: Path):
    token = authority.token()
    secret = parse_token(token).secret
    sent: list[EnrollRequest] = []

    def relay(req: EnrollRequest) -> IssuedCertificate:
        sent.append(req)
        return authority.service.issue(req)

    record = _enroll(tmp_path / "node", _server(relay), token)
    state = NodeState.open(tmp_path / "node")
    assert state.authority() == authority.keys.public
    body = verify_certificate(state.certificate(), authority.keys.public)
    assert body.identity_pk == state.signer().public_key and body.device_id == record.device_id
    assert secret not in msgspec.msgpack.encode(sent[0])  # the secret never leaves the node
    assert sent[0].proof == enrollment_proof(
        secret, sent[0].claims, "ed25519", sent[0].identity_pk, sent[0].kem_pk
    )


def test_a_certificate_from_another_authority_is_refused(authority: TestAuthority, tmp_path: Path):
    rogue = make_authority(tmp_path / "rogue")

    def impostor(req: EnrollRequest) -> IssuedCertificate:
        # a server that makes its own authority and certifies the node's keys with it
        return rogue.service.issue(msgspec.structs.replace(req, **_reproof(rogue, req)))

    with pytest.raises(EnrollmentRejectedError, match="another authority"):
        _enroll(tmp_path / "node", _server(impostor), authority.token())
    assert NodeState.open(tmp_path / "node").device is None


def _reproof(rogue: TestAuthority, req: EnrollRequest) -> dict[str, bytes]:
    signed = parse_token(rogue.token())
    proof = enrollment_proof(signed.secret, signed.claims, req.scheme, req.identity_pk, req.kem_pk)
    return {"claims": signed.claims, "signature": signed.signature, "proof": proof}


def test_a_certificate_for_other_keys_is_refused(authority: TestAuthority, tmp_path: Path):
    def swapper(req: EnrollRequest) -> IssuedCertificate:
        return authority.service.issue(request_for(authority.token(), scheme="ed25519"))

    with pytest.raises(EnrollmentRejectedError, match="not for this device"):
        _enroll(tmp_path / "node", _server(swapper), authority.token())
    assert NodeState.open(tmp_path / "node").device is None


def test_a_forged_certificate_under_the_right_key_is_refused(authority: TestAuthority, tmp_path):
    rogue = make_authority(tmp_path / "rogue")

    def forger(req: EnrollRequest) -> IssuedCertificate:
        issued = rogue.service.issue(msgspec.structs.replace(req, **_reproof(rogue, req)))
        return msgspec.structs.replace(
            issued, authority=encode_authority_key(authority.keys.public)
        )

    with pytest.raises(EnrollmentRejectedError, match="refused"):
        _enroll(tmp_path / "node", _server(forger), authority.token())


def test_text_that_is_no_token_is_refused_before_anything_is_sent(tmp_path: Path):
    def never(req: EnrollRequest) -> IssuedCertificate:
        raise AssertionError("nothing may be sent")

    with pytest.raises(InvalidTokenError):
        _enroll(tmp_path / "node", _server(never), "qft_old_style_token")
