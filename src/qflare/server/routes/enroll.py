"""``POST /v1/enroll``: a one-time token buys a device id for the device's public keys."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from qflare.crypto.pq import (
    ED25519_PUBLIC_BYTES,
    MLDSA65_PUBLIC_BYTES,
    MLKEM768_PUBLIC_BYTES,
    SignatureScheme,
)
from qflare.protocol.wire import EnrollRequest, EnrollResponse
from qflare.server.errors import ApiError
from qflare.server.limits import read_body
from qflare.server.routes.deps import (
    MSGPACK,
    MSGPACK_BODY,
    CtxDep,
    client_ip,
    decode_body,
    msgpack_response,
)
from qflare.store import repos

router = APIRouter(prefix="/v1", tags=["enrollment"])
_IDENTITY_BYTES = {
    SignatureScheme.MLDSA65: MLDSA65_PUBLIC_BYTES,
    SignatureScheme.ED25519: ED25519_PUBLIC_BYTES,
    SignatureScheme.HYBRID: MLDSA65_PUBLIC_BYTES + ED25519_PUBLIC_BYTES,
}
_TOKEN_ERRORS = {
    "unknown": (401, "token_unknown", "no such enrollment token"),
    "used": (409, "token_used", "this enrollment token was already used"),
    "revoked": (403, "token_revoked", "this enrollment token was revoked"),
    "expired": (410, "token_expired", "this enrollment token has expired"),
}


def _check_keys(req: EnrollRequest, scheme: str) -> None:
    if req.scheme != scheme:
        raise ApiError(400, "wrong_scheme", f"this federation uses {scheme} identities")
    if len(req.identity_pk) != _IDENTITY_BYTES[SignatureScheme(scheme)]:
        raise ApiError(400, "bad_identity_key", "identity public key has the wrong length")
    if len(req.kem_pk) != MLKEM768_PUBLIC_BYTES + 32:
        raise ApiError(
            400, "bad_kem_key", "KEM public key must be ML-KEM-768 + X25519 (1216 bytes)"
        )
    if not req.token or len(req.token) > 200:
        raise ApiError(400, "bad_token", "token missing or too long")


@router.post(
    "/enroll",
    status_code=201,
    response_class=Response,
    openapi_extra=MSGPACK_BODY,
    responses={201: {"content": {MSGPACK: {}}}},
)
async def enroll(request: Request, ctx: CtxDep) -> Response:
    """Consume a single-use token and register the device's public keys."""
    now = ctx.clock()
    ctx.limiter.check(f"ip:{client_ip(request)}", now)
    req = decode_body(await read_body(request, ctx.settings.body_limit_enroll), EnrollRequest)
    _check_keys(req, ctx.settings.signature_scheme)
    device_id = ctx.rng.random_bytes(16).hex()
    with ctx.factory() as db, db.begin():
        if not repos.consume_token(db, req.token, device_id, now):
            status, code, detail = _TOKEN_ERRORS.get(
                repos.token_status(db, req.token, now), _TOKEN_ERRORS["unknown"]
            )
            raise ApiError(status, code, detail)
        repos.add_device(
            db,
            device_id=device_id,
            identity_pk=req.identity_pk,
            kem_pk=req.kem_pk,
            scheme=req.scheme,
            now=now,
        )
    ctx.ledger.append("enroll", "server", {"device": device_id}, now)
    resp = EnrollResponse(
        device_id=device_id, server_public_key=ctx.identity.public_key, server_scheme="mldsa65"
    )
    return msgpack_response(resp, 201)
