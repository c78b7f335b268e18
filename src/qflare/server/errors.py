"""One place that maps errors to RFC 9457 problem+json responses."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

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


def install_error_handlers(app: FastAPI) -> None:
    """Register the problem+json handlers on ``app``."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return problem(exc.status, exc.code.replace("_", " "), exc.detail, exc.code, exc.headers)

    @app.exception_handler(ProtocolError)
    async def _protocol(_: Request, exc: ProtocolError) -> JSONResponse:
        status = exc.http_status if 400 <= exc.http_status < 600 else 400
        return problem(status, "protocol error", str(exc), exc.reason.value)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(422, "invalid request", str(exc.errors())[:500], "validation_error")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, "http error", str(exc.detail), None)

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
