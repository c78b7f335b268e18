"""``POST /v1/sessions`` and ``POST /v1/sessions/{id}/confirm``: the PQ handshake over HTTP."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from qflare.crypto import SignatureScheme
from qflare.protocol.session import ClientFinished, ClientHello, SessionResponder
from qflare.server.errors import ApiError, problem_responses
from qflare.server.limits import read_body
from qflare.server.routes.deps import (
    MSGPACK,
    MSGPACK_BODY,
    CtxDep,
    decode_body,
    msgpack_response,
)
from qflare.server.sessions import LiveSession
from qflare.store import repos

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


@router.post(
    "",
    status_code=201,
    response_class=Response,
    openapi_extra=MSGPACK_BODY,
    responses={
        201: {"description": "the server's signed KEM reply", "content": {MSGPACK: {}}},
        **problem_responses(400, 401, 403, 408, 413, 415),
    },
)
async def open_session(request: Request, ctx: CtxDep) -> Response:
    """Verify a device's signed hello and answer with the server's signed KEM reply."""
    now = ctx.clock()
    hello = decode_body(await read_body(request, ctx.bodies.session, ctx.bodies), ClientHello)
    with ctx.factory() as db:
        device = repos.get_device(db, hello.device_id)
    if device is None:
        raise ApiError(401, "device_unknown", "no such device")
    if device.revoked_at is not None:
        raise ApiError(403, "device_revoked", "this device was revoked")
    responder = SessionResponder(
        ctx.identity,
        ctx.rng,
        ctx.settings.session_lifetime_s,
        SignatureScheme(ctx.settings.signature_scheme),
    )
    reply = responder.respond(hello, device.identity_pk, now=now)
    ctx.sessions.add_pending(reply.session_id, responder)
    return msgpack_response(reply, 201)


@router.post(
    "/{session_id}/confirm",
    status_code=204,
    response_class=Response,
    openapi_extra=MSGPACK_BODY,
    responses={
        204: {"description": "the session is live"},
        **problem_responses(400, 401, 404, 408, 413, 415, 422),
    },
)
async def confirm_session(
    session_id: Annotated[str, Path(max_length=64)], request: Request, ctx: CtxDep
) -> Response:
    """Check the device's key confirmation; the session is then live."""
    finished = decode_body(await read_body(request, ctx.bodies.session, ctx.bodies), ClientFinished)
    if finished.session_id != session_id:
        raise ApiError(400, "session_mismatch", "body names another session")
    responder = ctx.sessions.take_pending(session_id)
    channel = responder.confirm(finished)
    assert responder.device_id is not None
    ctx.sessions.establish(LiveSession(responder.device_id, channel))
    return Response(status_code=204)
