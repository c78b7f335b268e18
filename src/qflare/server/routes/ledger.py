"""The audit ledger, for nodes and outside auditors: the cosigned head, entries, proofs.

* ``GET /v1/ledger/head``: the latest cosigned head (freshly signed and uncosigned without
  witnesses); JSON by default (the signed head's fields at the top, as before, plus
  ``cosignatures`` and ``server_public_key``), msgpack :class:`~qflare.ledger.wire.HeadReply`
  with ``Accept: application/msgpack``.
* ``GET /v1/ledger/entries?start=&end=``: canonical entry bytes ``[start, end)``, at most
  :data:`~qflare.ledger.wire.MAX_PAGE` per page.
* ``GET /v1/ledger/consistency?first=&second=``: the RFC 6962 proof that the tree of ``second``
  entries extends the tree of ``first``.

Each request first picks up entries other processes appended (the operator CLI writes to the
same table). Ranges are checked against the ledger's size: a bad one is a 400 ``bad_range``,
never a 500.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from qflare.ledger import LedgerTampered, encode_entry
from qflare.ledger.wire import (
    MAX_PAGE,
    MSGPACK,
    EntryPage,
    HeadReply,
    head_view,
    hex_view,
    prefers_msgpack,
)
from qflare.server.context import ServerContext
from qflare.server.errors import ApiError, problem_responses
from qflare.server.routes.deps import CtxDep

router = APIRouter(prefix="/v1/ledger", tags=["ledger"])
_BINARY: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or msgpack on request",
        "content": {MSGPACK: {}, "application/json": {}},
    }
}
Index = Annotated[int, Query(ge=0, le=2**62)]
OptionalIndex = Annotated[int | None, Query(ge=0, le=2**62)]


def _wants_msgpack(request: Request) -> bool:
    return prefers_msgpack(request.headers.get("accept"))


def _synced_size(ctx: ServerContext) -> int:
    """The ledger's size after reading what other writers appended."""
    try:
        ctx.ledger.sync()
    except LedgerTampered as exc:
        raise ApiError(503, "ledger_tampered", str(exc)) from exc
    return ctx.ledger.size


def _msgpack(obj: msgspec.Struct) -> Response:
    return Response(msgspec.msgpack.encode(obj), media_type=MSGPACK)


@router.get("/head", response_class=Response, responses=_BINARY | problem_responses())
def ledger_head(request: Request, ctx: CtxDep) -> Response:
    """The latest cosigned tree head of the audit ledger and the ledger key."""
    _synced_size(ctx)
    reply = HeadReply(head=ctx.cosigner.current(), server_public_key=ctx.identity.public_key)
    return _msgpack(reply) if _wants_msgpack(request) else JSONResponse(head_view(reply))


@router.get("/entries", response_class=Response, responses=_BINARY | problem_responses(400, 422))
def ledger_entries(
    request: Request, ctx: CtxDep, start: Index = 0, end: OptionalIndex = None
) -> Response:
    """Canonical bytes of entries ``start <= index < end`` (``end``: at most a page further)."""
    size = _synced_size(ctx)
    stop = min(start + MAX_PAGE, size) if end is None else end
    if not start <= stop <= size:
        raise ApiError(400, "bad_range", f"need 0 <= start <= end <= {size}, got [{start}, {stop})")
    if stop - start > MAX_PAGE:
        raise ApiError(400, "bad_range", f"at most {MAX_PAGE} entries per page")
    try:
        rows = ctx.ledger.entries(start, stop)
    except LedgerTampered as exc:
        raise ApiError(503, "ledger_tampered", str(exc)) from exc
    page = EntryPage(start=start, tree_size=size, entries=tuple(encode_entry(e) for e in rows))
    return _msgpack(page) if _wants_msgpack(request) else JSONResponse(hex_view(page))


@router.get(
    "/consistency", response_class=Response, responses=_BINARY | problem_responses(400, 422)
)
def ledger_consistency(request: Request, ctx: CtxDep, first: Index, second: Index) -> Response:
    """Proof that the tree of ``second`` entries is an append-only extension of ``first``."""
    size = _synced_size(ctx)
    if not first <= second <= size:
        raise ApiError(
            400, "bad_range", f"need 0 <= first <= second <= {size}, got ({first}, {second})"
        )
    proof = ctx.ledger.consistency_proof(first, second)
    return _msgpack(proof) if _wants_msgpack(request) else JSONResponse(hex_view(proof))
