"""``qflare authority serve``: the authority's HTTP face, ``POST /v1/certificates``.

The aggregation server relays enrollment requests here. Every refusal is problem+json with a
stable ``code`` (``token_used``, ``bad_proof``, ...) that the server passes on to the node.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from qflare import __version__
from qflare.authority.service import AuthorityService
from qflare.authority.settings import AuthoritySettings
from qflare.crypto import Rng, SystemRng
from qflare.protocol.wire import EnrollmentRefusedError, EnrollRequest

__all__ = ["app_from_env", "create_authority_app"]

MSGPACK = "application/msgpack"
PROBLEM = "application/problem+json"
log = logging.getLogger("qflare.authority")


def _problem(status: int, detail: str, code: str | None) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": (code or "error").replace("_", " "),
        "status": status,
        "detail": detail,
    }
    if code:
        body["code"] = code
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(EnrollmentRefusedError)
    async def _refused(_: Request, exc: EnrollmentRefusedError) -> JSONResponse:
        return _problem(exc.status, exc.detail, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _problem(422, str(exc.errors())[:500], "validation_error")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return _problem(exc.status_code, str(exc.detail), None)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"error": type(exc).__name__})
        return _problem(500, "the authority failed; nothing was issued", "internal")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise EnrollmentRefusedError(
            413, "body_too_large", f"body of {declared} bytes exceeds {limit}"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise EnrollmentRefusedError(413, "body_too_large", f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(body: bytes) -> EnrollRequest:
    try:
        return msgspec.msgpack.decode(body, type=EnrollRequest)
    except msgspec.MsgspecError as exc:
        raise EnrollmentRefusedError(
            400, "malformed_message", f"malformed msgpack body: {exc}"
        ) from None


def _service(request: Request) -> AuthorityService:
    service = request.app.state.service
    assert isinstance(service, AuthorityService)
    return service


def create_authority_app(
    settings: AuthoritySettings, *, clock: Callable[[], float] = time.time, rng: Rng | None = None
) -> FastAPI:
    """Build the authority's application (the key and database are opened at start-up).

    Args:
        settings: Authority settings (built by the CLI).
        clock: Time source (injectable for tests).
        rng: Randomness for ids (the OS CSPRNG by default).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = AuthorityService.open(settings, clock=clock, rng=rng or SystemRng())
        app.state.service = service
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="QFLARE enrollment authority",
        version=__version__,
        lifespan=lifespan,
        summary="Signs device certificates; holds the key the aggregation server does not",
    )

    @app.post(
        "/v1/certificates",
        status_code=201,
        response_class=Response,
        tags=["authority"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {MSGPACK: {"schema": {"type": "string", "format": "binary"}}},
            }
        },
        responses={201: {"content": {MSGPACK: {}}}},
    )
    async def issue(request: Request) -> Response:
        """Check an enrollment request and issue its device certificate (msgpack in and out)."""
        req = _decode(await _read_body(request, settings.body_limit))
        issued = await run_in_threadpool(_service(request).issue, req)
        return Response(msgspec.msgpack.encode(issued), status_code=201, media_type=MSGPACK)

    @app.get("/v1/health", tags=["authority"])
    def health(request: Request) -> dict[str, str]:
        """Liveness and the authority key's fingerprint."""
        return {"status": "ok", "authority_sha256": _service(request).public.fingerprint.hex()}

    _install_errors(app)
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory``: settings from ``QFLARE_AUTHORITY_*`` variables."""
    return create_authority_app(AuthoritySettings())
