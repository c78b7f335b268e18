"""One place that maps errors to RFC 9457 problem+json responses, and documents them.

Every error the server answers with is made here: :class:`ApiError` (a stable ``code``),
protocol errors, validation errors, Starlette's own (404, 405 with ``Allow``), a client that
went away mid-request (a quiet log line), and anything unexpected (500, logged). The abuse guard
(:mod:`qflare.server.guard`) answers through :func:`problem_for` before a route runs.
:func:`problem_responses` is the OpenAPI side: which problems a route may answer with.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from qflare.protocol.errors import ProtocolError
from qflare.store.db import DatabaseUnavailable, describe_database_error

PROBLEM = "application/problem+json"
log = logging.getLogger("qflare.server")


def problem(
    status: int,
    title: str,
    detail: str,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A problem+json response."""
    body: dict[str, object] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if code:
        body["code"] = code
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


class ApiError(Exception):
    """An HTTP error with a stable machine-readable ``code`` (and optional headers)."""

    def __init__(
        self, status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.headers = dict(headers or {})


def problem_for(exc: ApiError) -> JSONResponse:
    """The problem+json response of an :class:`ApiError`."""
    return problem(exc.status, exc.code.replace("_", " "), exc.detail, exc.code, exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Register the problem+json handlers on ``app``."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return problem_for(exc)

    @app.exception_handler(ProtocolError)
    async def _protocol(_: Request, exc: ProtocolError) -> JSONResponse:
        status = exc.http_status if 400 <= exc.http_status < 600 else 400
        return problem(status, "protocol error", str(exc), exc.reason.value)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(422, "invalid request", str(exc.errors())[:500], "validation_error")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, "http error", str(exc.detail), None, exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect) -> JSONResponse:
        # nobody is left to read the answer: one quiet line, no traceback
        log.info("client left mid-request", extra={"path": request.url.path})
        return problem(400, "client disconnected", "the client left mid-request", "disconnected")

    # ---- the database refused a read or write: 503 with Retry-After, never 500 -------------
    @app.exception_handler(DatabaseUnavailable)
    async def _database(_: Request, exc: DatabaseUnavailable) -> JSONResponse:
        return _unavailable(exc.retry_after_s)

    @app.exception_handler(OperationalError)
    async def _operational(_: Request, exc: OperationalError) -> JSONResponse:
        log.error("database error", extra={"reason": describe_database_error(exc)})
        return _unavailable(1)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"error": type(exc).__name__})
        return problem(500, "internal error", "the server failed; nothing was recorded", "internal")


def _unavailable(retry_after_s: int) -> JSONResponse:
    """503 ``database_unavailable``: nothing was recorded; the same request may be retried."""
    return problem(
        503,
        "database unavailable",
        "the server cannot write its database right now; nothing was recorded, retry later",
        "database_unavailable",
        {"Retry-After": str(retry_after_s)},
    )


# ---- OpenAPI ------------------------------------------------------------------------------------

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "description": "stable machine-readable reason"},
    },
}
_RETRY_AFTER = {
    "description": "seconds to wait before retrying",
    "schema": {"type": "integer", "minimum": 0},
}
_WHY = {
    400: "malformed request (body, headers or values)",
    401: "unknown device, session or token; bad signature",
    403: "revoked device or token; a result naming another device",
    404: "no such resource",
    408: "the request body did not arrive in time (body_timeout)",
    409: "a replayed sequence, a stale step or round, a conflicting record",
    413: "the request body is larger than allowed (body_too_large)",
    415: "the request body is not application/msgpack (unsupported_media_type)",
    422: "parameters that violate the schema (validation_error)",
    429: "too many requests (rate_limited): retry after Retry-After seconds",
    502: "the enrollment authority answered with something unusable",
    503: "overloaded or a dependency is unavailable; retry later",
}
GUARDED = (429, 503)
"""Problems any route may answer with: the abuse guard runs before the route."""


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the problems a route answers with (plus :data:`GUARDED`)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*statuses, *GUARDED}):
        entry: dict[str, Any] = {
            "description": _WHY[status],
            "content": {PROBLEM: {"schema": PROBLEM_SCHEMA}},
        }
        if status in (429, 503):
            entry["headers"] = {"Retry-After": {**_RETRY_AFTER, "required": status == 429}}
        out[status] = entry
    return out
