"""The witness's HTTP API: ``GET /v1/witness``, ``POST /v1/cosign``, ``GET /v1/health``.

Bodies are msgpack for machines (``Accept: application/msgpack``) and hex-JSON otherwise. Every
error is an RFC 9457 problem+json with a machine-readable ``code``: a refusal's
:class:`~qflare.ledger.RefusalCode`, or ``malformed_body`` / ``body_too_large`` /
``validation_error``.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import msgspec
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from qflare import __version__
from qflare.ledger import CosignRequest, RefusalCode, WitnessRefused
from qflare.ledger.wire import MSGPACK, hex_view, prefers_msgpack
from qflare.witness.service import WitnessService

PROBLEM: Final = "application/problem+json"
BODY_LIMIT: Final = 64 * 1024
_CONFLICTS = frozenset(
    {RefusalCode.INCONSISTENT, RefusalCode.SMALLER_THAN_COSIGNED, RefusalCode.WRONG_PROOF_RANGE}
)
log = logging.getLogger("qflare.witness")


class _BodyError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def _problem(status: int, code: str, detail: str) -> JSONResponse:
    body = {"type": "about:blank", "title": code.replace("_", " "), "status": status}
    return JSONResponse({**body, "detail": detail, "code": code}, status, media_type=PROBLEM)


def _reply(request: Request, obj: msgspec.Struct) -> Response:
    if prefers_msgpack(request.headers.get("accept")):
        return Response(msgspec.msgpack.encode(obj), media_type=MSGPACK)
    return JSONResponse(hex_view(obj))


async def _read_body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > BODY_LIMIT:
            raise _BodyError(
                413, "body_too_large", f"a cosign request has at most {BODY_LIMIT} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(WitnessRefused)
    async def _refused(_: Request, exc: WitnessRefused) -> JSONResponse:
        return _problem(409 if exc.code in _CONFLICTS else 400, exc.code.value, exc.reason)

    @app.exception_handler(_BodyError)
    async def _bad(_: Request, exc: _BodyError) -> JSONResponse:
        return _problem(exc.status, exc.code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _problem(422, "validation_error", str(exc.errors())[:500])

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return _problem(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"error": type(exc).__name__})
        return _problem(500, "internal", "the witness failed; nothing was cosigned")


def create_witness_app(service: WitnessService) -> FastAPI:
    """The witness application around a loaded :class:`WitnessService`."""
    app = FastAPI(title="QFLARE ledger witness", version=__version__)

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        """Liveness and the size of the last cosigned head."""
        return {"status": "ok", "tree_size": service.state.tree_size}

    @app.get("/v1/witness", response_class=Response, responses={200: {"content": {MSGPACK: {}}}})
    def witness(request: Request) -> Response:
        """The witness's public key and the last head it cosigned."""
        return _reply(request, service.status())

    @app.post(
        "/v1/cosign",
        response_class=Response,
        responses={200: {"content": {MSGPACK: {}}}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {MSGPACK: {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def cosign(request: Request) -> Response:
        """Cosign a signed tree head that extends the last cosigned one (msgpack body)."""
        try:
            body = msgspec.msgpack.decode(await _read_body(request), type=CosignRequest)
        except msgspec.DecodeError as exc:
            raise _BodyError(
                400, "malformed_body", f"expected a msgpack CosignRequest: {exc}"
            ) from exc
        cosig = await run_in_threadpool(service.cosign, body)
        return _reply(request, cosig)

    _install_errors(app)
    return app
