"""A raw HTTP device for driving the server through its public API (no qflare.node)."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

import msgspec
from fastapi.testclient import TestClient
from httpx import Response

from qflare.crypto import HybridKem, SignatureScheme, SystemRng, make_signer
from qflare.protocol.identity import enrollment_proof, parse_token
from qflare.protocol.session import C2S, S2C, SecureChannel, ServerHello, SessionInitiator
from qflare.protocol.wire import (
    UPDATE_CONTEXT,
    EnrollRequest,
    EnrollResponse,
    SealedFrame,
    SignedResult,
    Task,
    result_transcript,
)

MSGPACK = {"content-type": "application/msgpack"}


def encode(obj: object) -> bytes:
    return msgspec.msgpack.encode(obj)


def code(resp: Response) -> str | None:
    """The problem+json ``code`` of an error response."""
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.text
    return resp.json().get("code")


@dataclass
class Session:
    """An established session of a test device."""

    channel: SecureChannel

    @property
    def id(self) -> str:
        return self.channel.session_id


class Device:
    """Keys and HTTP calls of one device.

    Args:
        client: Test client of the server.
        scheme: Identity signature scheme.
    """

    def __init__(self, client: TestClient, scheme: SignatureScheme = SignatureScheme.ED25519):
        self.client, self.scheme, self.rng = client, scheme, SystemRng()
        self.signer = make_signer(scheme, self.rng)
        self.kem_pk = HybridKem.generate(self.rng).public_key
        self.device_id: str | None = None
        self.server_pk: bytes | None = None
        self.server_scheme = SignatureScheme.MLDSA65
        self.reply: EnrollResponse | None = None

    def enroll_request(self, token: str, **changes: object) -> EnrollRequest:
        """An honest request for ``token``; ``changes`` are applied after the proof is made."""
        signed = parse_token(token)
        ids = (self.signer.public_key, self.kem_pk)
        req = EnrollRequest(
            claims=signed.claims,
            signature=signed.signature,
            proof=enrollment_proof(signed.secret, signed.claims, self.scheme.value, *ids),
            scheme=self.scheme.value,
            identity_pk=self.signer.public_key,
            kem_pk=self.kem_pk,
        )
        return msgspec.structs.replace(req, **changes)

    def enroll(self, token: str, **changes: object) -> Response:
        return self.post_enroll(self.enroll_request(token, **changes))

    def post_enroll(self, request: EnrollRequest) -> Response:
        resp = self.client.post("/v1/enroll", content=encode(request), headers=MSGPACK)
        if resp.status_code == 201:
            reply = msgspec.msgpack.decode(resp.content, type=EnrollResponse)
            self.device_id, self.server_pk = reply.device_id, reply.server_public_key
            self.server_scheme = SignatureScheme(reply.server_scheme)
            self.reply = reply
        return resp

    def initiator(self) -> SessionInitiator:
        assert self.device_id is not None and self.server_pk is not None
        return SessionInitiator(
            self.device_id, self.signer, self.server_pk, self.rng, self.server_scheme
        )

    def hello(self, initiator: SessionInitiator, **changes: object) -> Response:
        hello = msgspec.structs.replace(initiator.hello(now=time.time()), **changes)
        return self.client.post("/v1/sessions", content=encode(hello), headers=MSGPACK)

    def open_session(self) -> Session:
        """Run the whole handshake; fail the test if the server refuses."""
        initiator = self.initiator()
        resp = self.hello(initiator)
        assert resp.status_code == 201, resp.text
        reply = msgspec.msgpack.decode(resp.content, type=ServerHello)
        finished, channel = initiator.finish(reply, now=time.time())
        resp = self.client.post(
            f"/v1/sessions/{reply.session_id}/confirm", content=encode(finished), headers=MSGPACK
        )
        assert resp.status_code == 204, resp.text
        return Session(channel)

    def poll_headers(self, session: Session) -> dict[str, str]:
        """Authenticated headers of one poll (the next sequence number of the session)."""
        seq, tag = session.channel.seal(b"", now=time.time(), direction=C2S)
        return {
            "X-QFLARE-Session": session.id,
            "X-QFLARE-Seq": str(seq),
            "X-QFLARE-Auth": base64.b64encode(tag).decode(),
        }

    def poll(self, session: Session, wait: float = 0.0) -> Response:
        return self.client.get(
            "/v1/tasks", params={"wait": wait}, headers=self.poll_headers(session)
        )

    def task(self, session: Session, resp: Response) -> Task:
        frame = msgspec.msgpack.decode(resp.content, type=SealedFrame)
        plain = session.channel.open(frame.seq, frame.ciphertext, now=time.time(), direction=S2C)
        return msgspec.msgpack.decode(plain, type=Task)

    def signed(self, task: Task, message: bytes, signature: bytes | None = None) -> SignedResult:
        assert self.device_id is not None
        transcript = result_transcript(self.device_id, task.round_id, task.step, message)
        return SignedResult(
            device_id=self.device_id,
            round_id=task.round_id,
            step=task.step,
            message=message,
            signature=signature or self.signer.sign(transcript, context=UPDATE_CONTEXT),
        )

    def post_result(self, session: Session, result: SignedResult) -> Response:
        seq, ct = session.channel.seal(encode(result), now=time.time(), direction=C2S)
        frame = SealedFrame(session_id=session.id, seq=seq, ciphertext=ct)
        headers = MSGPACK | {"X-QFLARE-Session": session.id}
        return self.client.post("/v1/results", content=encode(frame), headers=headers)
