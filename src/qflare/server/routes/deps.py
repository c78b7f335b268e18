"""Typed dependencies and small helpers shared by the routers."""

from __future__ import annotations

from typing import Annotated, TypeVar

import msgspec
from fastapi import Depends, Request, Response

from qflare.protocol.errors import AbortReason, RemoteProtocolError
from qflare.server.context import ServerContext

MSGPACK = "application/msgpack"
T = TypeVar("T")


def get_ctx(request: Request) -> ServerContext:
    """The app's :class:`ServerContext`."""
    ctx = request.app.state.ctx
    assert isinstance(ctx, ServerContext)
    return ctx


CtxDep = Annotated[ServerContext, Depends(get_ctx)]


def decode_body(body: bytes, kind: type[T]) -> T:
    """Decode a msgpack body as ``kind``.

    Raises:
        RemoteProtocolError: malformed msgpack or wrong shape (400).
    """
    try:
        return msgspec.msgpack.decode(body, type=kind)
    except msgspec.MsgspecError as exc:
        raise RemoteProtocolError(
            f"malformed msgpack body: {exc}",
            state="HTTP",
            reason=AbortReason.MALFORMED_MESSAGE,
            http_status=400,
        ) from exc


def msgpack_response(obj: msgspec.Struct, status: int = 200) -> Response:
    """Encode ``obj`` as a msgpack response."""
    return Response(msgspec.msgpack.encode(obj), status_code=status, media_type=MSGPACK)


MSGPACK_BODY = {
    "requestBody": {
        "required": True,
        "content": {MSGPACK: {"schema": {"type": "string", "format": "binary"}}},
    }
}
"""OpenAPI description of a raw msgpack request body."""
