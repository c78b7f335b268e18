"""``GET /v1/tasks`` (long-poll) and ``POST /v1/results``: protocol traffic inside sessions."""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Annotated

import msgspec
from fastapi import APIRouter, Header, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from qflare.protocol.session import C2S, S2C
from qflare.protocol.wire import SealedFrame, SignedResult
from qflare.server.context import ServerContext
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

router = APIRouter(prefix="/v1", tags=["rounds"])
_POLL_STEP_S = 0.05


def _active_device(ctx: ServerContext, live: LiveSession) -> None:
    with ctx.factory() as db:
        device = repos.get_device(db, live.device_id)
    if device is None or device.revoked_at is not None:
        ctx.sessions.drop_device(live.device_id)
        raise ApiError(403, "device_revoked", "this device was revoked")


@router.get(
    "/tasks",
    response_class=Response,
    responses={
        200: {"description": "the next task, sealed", "content": {MSGPACK: {}}},
        204: {"description": "no task before the wait ended"},
        **problem_responses(400, 401, 403, 409, 422),
    },
)
async def get_task(
    ctx: CtxDep,
    x_qflare_session: Annotated[str, Header(max_length=64)],
    x_qflare_seq: Annotated[int, Header(ge=1, le=2**62)],
    x_qflare_auth: Annotated[str, Header(max_length=64)],
    wait: Annotated[float, Query(ge=0, le=60)] = 0.0,
) -> Response:
    """Long-poll for the device's next task; the headers carry a sealed, replay-proof poll."""
    now = ctx.clock()
    live = ctx.sessions.get(x_qflare_session, now)
    try:
        tag = base64.b64decode(x_qflare_auth, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "bad_auth", "X-QFLARE-Auth is not base64") from exc
    live.channel.open(x_qflare_seq, tag, now=now, direction=C2S)
    ctx.device_limiter.check(f"device:{live.device_id}", now)
    _active_device(ctx, live)
    ctx.coordinator.seen(live.device_id, now)
    if ctx.long_polls.locked():
        raise ApiError(
            503,
            "too_many_polls",
            "too many concurrent long-polls; retry later",
            headers={"Retry-After": "1"},
        )
    async with ctx.long_polls:
        deadline = now + min(wait, ctx.settings.long_poll_max_s)
        seen_generation = -1
        while True:
            generation = ctx.coordinator.generation
            if generation != seen_generation:  # tasks only change when the generation does
                seen_generation = generation
                task = ctx.coordinator.task_for(live.device_id)
                if task is not None:
                    body = msgspec.msgpack.encode(task)
                    seq, ct = live.channel.seal(body, now=ctx.clock(), direction=S2C)
                    frame = SealedFrame(session_id=live.channel.session_id, seq=seq, ciphertext=ct)
                    return msgpack_response(frame)
            if ctx.clock() >= deadline:
                return Response(status_code=204)
            await asyncio.sleep(_POLL_STEP_S)


@router.post(
    "/results",
    status_code=202,
    response_class=Response,
    openapi_extra=MSGPACK_BODY,
    responses={
        202: {"description": "accepted"},
        **problem_responses(400, 401, 403, 408, 409, 413, 415, 422),
    },
)
async def post_result(
    request: Request, ctx: CtxDep, x_qflare_session: Annotated[str, Header(max_length=64)]
) -> Response:
    """A sealed, signed protocol message from a device.

    The session named in ``X-QFLARE-Session`` must be live before a byte of the body is read,
    and the body may not exceed what the federation's model needs.
    """
    now = ctx.clock()
    live = ctx.sessions.get(x_qflare_session, now)
    frame = decode_body(await read_body(request, ctx.bodies.results, ctx.bodies), SealedFrame)
    if frame.session_id != x_qflare_session:
        raise ApiError(400, "session_mismatch", "the frame names another session than its header")
    plain = live.channel.open(frame.seq, frame.ciphertext, now=now, direction=C2S)
    ctx.device_limiter.check(f"device:{live.device_id}", now)
    result = decode_body(plain, SignedResult)
    if result.device_id != live.device_id:
        raise ApiError(403, "wrong_device", "result names another device")
    with ctx.factory() as db:
        device = repos.get_device(db, live.device_id)
    if device is None or device.revoked_at is not None:
        raise ApiError(403, "device_revoked", "this device was revoked")
    await run_in_threadpool(ctx.coordinator.submit, live.device_id, result, device.identity_pk)
    return Response(status_code=202)
