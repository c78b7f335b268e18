"""Sessions, polls and results over SQLite and PostgreSQL: forged, replayed or revoked → 4xx."""

from __future__ import annotations

import base64
import time

import msgspec
import pytest

from qflare.protocol.session import C2S, ClientFinished, ServerHello
from qflare.protocol.wire import SealedFrame, SecAggStart
from qflare.store import repos
from qflare.store.models import RoundEvent
from tests.server.conftest import Harness
from tests.server.helpers import MSGPACK, Device, Session, code, encode


def _revoke(server: Harness, dev: Device) -> None:
    assert dev.device_id is not None
    with server.ctx.factory() as db, db.begin():
        assert repos.revoke_device(db, dev.device_id, time.time())


def test_handshake_then_polls_with_increasing_sequence(server: Harness):
    dev = server.enrolled()
    session = dev.open_session()
    for _ in range(3):
        assert dev.poll(session).status_code == 204


def test_revoked_device_cannot_open_a_session(server: Harness):
    dev = server.enrolled()
    _revoke(server, dev)
    resp = dev.hello(dev.initiator())
    assert resp.status_code == 403 and code(resp) == "device_revoked"


def test_revoking_ends_live_sessions(server: Harness):
    dev = server.enrolled()
    session = dev.open_session()
    _revoke(server, dev)
    resp = dev.poll(session)
    assert resp.status_code == 403 and code(resp) == "device_revoked"
    assert dev.poll(session).status_code == 401  # the session was dropped


def test_unknown_device_hello_is_401(server: Harness):
    dev = server.enrolled()
    resp = dev.hello(dev.initiator(), device_id="f" * 32)
    assert resp.status_code == 401 and code(resp) == "device_unknown"


@pytest.mark.parametrize("forgery", ["flipped-signature", "other-device-key", "edited-nonce"])
def test_badly_signed_hello_is_401(server: Harness, forgery):
    dev, other = server.enrolled(), server.enrolled()
    if forgery == "other-device-key":  # b signs a hello that claims to be a
        hello = other.initiator().hello(now=time.time())
        hello = msgspec.structs.replace(hello, device_id=dev.device_id)
    else:
        hello = dev.initiator().hello(now=time.time())
        if forgery == "flipped-signature":
            sig = bytes([hello.signature[0] ^ 1]) + hello.signature[1:]
            hello = msgspec.structs.replace(hello, signature=sig)
        else:
            hello = msgspec.structs.replace(hello, nonce=b"\7" * 32)
    resp = server.client.post("/v1/sessions", content=encode(hello), headers=MSGPACK)
    assert resp.status_code == 401 and code(resp) == "bad_signature"


def test_stale_hello_is_401(server: Harness):
    dev = server.enrolled()
    initiator = dev.initiator()
    hello = initiator.hello(now=time.time() - 3600)  # signed, but an hour old
    resp = server.client.post("/v1/sessions", content=encode(hello), headers=MSGPACK)
    assert resp.status_code == 401


@pytest.mark.parametrize("when", [float("nan"), float("inf")])
def test_a_correctly_signed_hello_with_a_non_finite_time_is_refused(server: Harness, when):
    dev = server.enrolled()
    hello = dev.initiator().hello(now=when)  # the signature covers the NaN
    resp = server.client.post("/v1/sessions", content=encode(hello), headers=MSGPACK)
    assert resp.status_code == 400 and code(resp) == "malformed_message"


def test_wrong_key_confirmation_is_401_and_unknown_handshake_404(server: Harness):
    dev = server.enrolled()
    resp = dev.hello(dev.initiator())
    reply = msgspec.msgpack.decode(resp.content, type=ServerHello)
    path = f"/v1/sessions/{reply.session_id}/confirm"
    forged = ClientFinished(session_id=reply.session_id, confirm=b"\0" * 16)
    resp = server.client.post(path, content=encode(forged), headers=MSGPACK)
    assert resp.status_code == 401
    resp = server.client.post(path, content=encode(forged), headers=MSGPACK)
    assert resp.status_code == 404  # a failed confirmation consumed the handshake
    other = ClientFinished(session_id="0" * 32, confirm=b"\0" * 16)
    resp = server.client.post(path, content=encode(other), headers=MSGPACK)
    assert resp.status_code == 400 and code(resp) == "session_mismatch"


def test_replayed_poll_is_409_and_the_session_survives(server: Harness):
    dev = server.enrolled()
    session = dev.open_session()
    headers = dev.poll_headers(session)
    assert server.client.get("/v1/tasks", headers=headers).status_code == 204
    resp = server.client.get("/v1/tasks", headers=headers)
    assert resp.status_code == 409
    assert dev.poll(session).status_code == 204


def test_forged_poll_tag_is_refused_without_burning_the_sequence(server: Harness):
    dev = server.enrolled()
    session = dev.open_session()
    headers = dev.poll_headers(session)
    forged = headers | {"X-QFLARE-Auth": base64.b64encode(b"\0" * 16).decode()}
    resp = server.client.get("/v1/tasks", headers=forged)
    assert resp.status_code == 400 and code(resp) == "bad_ciphertext"
    assert server.client.get("/v1/tasks", headers=headers).status_code == 204
    bad = headers | {"X-QFLARE-Auth": "not base64!"}
    resp = server.client.get("/v1/tasks", headers=bad)
    assert resp.status_code == 400 and code(resp) == "bad_auth"


def test_unknown_session_is_401(server: Harness):
    dev = server.enrolled()
    session = dev.open_session()
    headers = dev.poll_headers(session) | {"X-QFLARE-Session": "0" * 32}
    resp = server.client.get("/v1/tasks", headers=headers)
    assert resp.status_code == 401
    frame = SealedFrame(session_id="0" * 32, seq=1, ciphertext=b"\0" * 32)
    headers = MSGPACK | {"X-QFLARE-Session": "0" * 32}
    resp = server.client.post("/v1/results", content=encode(frame), headers=headers)
    assert resp.status_code == 401


def test_poll_from_another_sessions_channel_is_refused(server: Harness):
    a, b = server.enrolled(), server.enrolled()
    sa, sb = a.open_session(), b.open_session()
    headers = b.poll_headers(sb) | {"X-QFLARE-Session": sa.id}  # b's tag under a's session
    resp = server.client.get("/v1/tasks", headers=headers)
    assert resp.status_code == 400 and code(resp) == "bad_ciphertext"


def _round_started(server: Harness) -> tuple[Device, Session, Device, Session]:
    """Two devices seen by the coordinator, the first holding its round-start task."""
    a, b = server.enrolled(), server.enrolled()
    sa, sb = a.open_session(), b.open_session()
    assert a.poll(sa).status_code == 204 and b.poll(sb).status_code == 204
    return a, sa, b, sb


def test_result_with_bad_signature_is_401_and_not_recorded(server: Harness):
    a, sa, b, _ = _round_started(server)
    resp = a.poll(sa, wait=5.0)
    assert resp.status_code == 200, "the coordinator did not open a round"
    task = a.task(sa, resp)
    assert isinstance(task.body, SecAggStart) and task.step == 0
    resp = a.post_result(sa, a.signed(task, b"\x90", signature=b"\0" * 64))
    assert resp.status_code == 401 and code(resp) == "bad_signature"
    other_key = b.signed(task, b"\x90").signature  # valid signature, wrong signer
    resp = a.post_result(sa, a.signed(task, b"\x90", signature=other_key))
    assert resp.status_code == 401
    assert server.count(RoundEvent) == 0


def test_misaddressed_results_are_refused_and_not_recorded(server: Harness):
    a, sa, b, _ = _round_started(server)
    task = a.task(sa, a.poll(sa, wait=5.0))
    resp = a.post_result(sa, a.signed(msgspec.structs.replace(task, step=3), b"\x90"))
    assert resp.status_code == 409  # not the current step
    resp = a.post_result(sa, a.signed(msgspec.structs.replace(task, round_id=99), b"\x90"))
    assert resp.status_code == 409  # not the current round
    resp = a.post_result(
        sa, msgspec.structs.replace(a.signed(task, b"\x90"), device_id=b.device_id)
    )
    assert resp.status_code == 403 and code(resp) == "wrong_device"
    resp = a.post_result(sa, a.signed(task, b"\xc1garbage"))
    assert resp.status_code == 400 and code(resp) == "malformed_message"
    assert server.count(RoundEvent) == 0


def test_replayed_result_frame_is_409(server: Harness):
    a, sa, _, _ = _round_started(server)
    task = a.task(sa, a.poll(sa, wait=5.0))
    seq, ct = sa.channel.seal(encode(a.signed(task, b"\xc1")), now=time.time(), direction=C2S)
    body = encode(SealedFrame(session_id=sa.id, seq=seq, ciphertext=ct))
    headers = MSGPACK | {"X-QFLARE-Session": sa.id}
    assert server.client.post("/v1/results", content=body, headers=headers).status_code == 400
    resp = server.client.post("/v1/results", content=body, headers=headers)
    assert resp.status_code == 409
