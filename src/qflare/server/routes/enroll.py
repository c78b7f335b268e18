"""``POST /v1/enroll``: relay a node's enrollment to the authority and keep its certificate.

The server does not hold the enrollment authority's key: it refuses what it can check cheaply
(the federation's scheme, the keys' shape, the token's signature against the pinned authority
key, its expiry), relays the rest to the authority, checks that the certificate it gets back is
signed by the pinned key and binds exactly the requested keys, stores the device, and records
the certificate in the audit ledger, so every device the authority vouches for is visible.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from qflare.ledger import PayloadValue
from qflare.protocol.identity import (
    AuthorityKey,
    CertificateBody,
    IdentityError,
    certificate_digest,
    encode_authority_key,
    verify_certificate,
)
from qflare.protocol.wire import (
    EnrollmentRefusedError,
    EnrollRequest,
    EnrollResponse,
    IssuedCertificate,
    check_device_keys,
    check_token,
)
from qflare.server.authority_client import AuthorityClient, AuthorityUnavailableError
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
from qflare.store import repos

router = APIRouter(prefix="/v1", tags=["enrollment"])
RETRY_AFTER_S = 5
DEVICE_ID_MAX = 32  # the devices table's id column


def _authority(ctx: ServerContext) -> tuple[AuthorityClient, AuthorityKey]:
    if ctx.authority is None or ctx.authority_key is None:
        raise ApiError(
            503,
            "enrollment_disabled",
            "this server has no enrollment authority configured (authority_url, authority_key)",
        )
    return ctx.authority, ctx.authority_key


def _precheck(req: EnrollRequest, ctx: ServerContext, key: AuthorityKey, now: float) -> None:
    """Refuse, without bothering the authority, what the server can check itself."""
    if req.scheme != ctx.settings.signature_scheme:
        raise EnrollmentRefusedError(
            400, "wrong_scheme", f"this federation uses {ctx.settings.signature_scheme} identities"
        )
    check_device_keys(req.scheme, req.identity_pk, req.kem_pk)
    check_token(req.claims, req.signature, key, now)


async def _relay(client: AuthorityClient, req: EnrollRequest) -> IssuedCertificate:
    try:
        return await run_in_threadpool(client.issue, req)
    except AuthorityUnavailableError as exc:
        raise ApiError(
            503,
            "authority_unavailable",
            f"the enrollment authority did not answer ({exc}); nothing was recorded, retry later",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from exc


def _check_issued(
    issued: IssuedCertificate, req: EnrollRequest, key: AuthorityKey
) -> CertificateBody:
    """The certificate must come from the pinned authority and bind exactly what was asked."""
    try:
        body = verify_certificate(issued.certificate, key)
    except IdentityError as exc:
        raise ApiError(
            502, "bad_certificate", f"the authority's certificate is refused: {exc}"
        ) from exc
    binds = (
        body.scheme.value == req.scheme
        and hmac.compare_digest(body.identity_pk, req.identity_pk)
        and hmac.compare_digest(body.kem_pk, req.kem_pk)
        and body.device_id == issued.device_id
        and 0 < len(issued.device_id) <= DEVICE_ID_MAX
        and body.client_index == issued.client_index
        and hmac.compare_digest(issued.authority, encode_authority_key(key))
    )
    if not binds:
        raise ApiError(502, "bad_certificate", "the authority's certificate binds other keys")
    return body


def _store(ctx: ServerContext, req: EnrollRequest, issued: IssuedCertificate, now: float) -> bool:
    """Store the device; False if this very certificate is stored already (a retried request)."""
    try:
        with ctx.factory() as db, db.begin():
            repos.add_device(
                db,
                device_id=issued.device_id,
                identity_pk=req.identity_pk,
                kem_pk=req.kem_pk,
                scheme=req.scheme,
                now=now,
                client_index=issued.client_index,
                certificate=issued.certificate,
            )
    except IntegrityError:
        with ctx.factory() as db:
            known = repos.get_device(db, issued.device_id)
        if known is not None and known.certificate == issued.certificate:
            return False
        raise ApiError(
            409,
            "client_index_taken",
            f"this server already has another device with client index {issued.client_index} "
            "(was it pointed at another authority?)",
        ) from None
    return True


@router.post(
    "/enroll",
    status_code=201,
    response_class=Response,
    openapi_extra=MSGPACK_BODY,
    responses={
        201: {"description": "enrolled", "content": {MSGPACK: {}}},
        **problem_responses(400, 401, 403, 408, 409, 413, 415, 502),
    },
)
async def enroll(request: Request, ctx: CtxDep) -> Response:
    """Relay an enrollment to the authority; store and audit the certificate it issues."""
    now = ctx.clock()
    req = decode_body(await read_body(request, ctx.bodies.enroll, ctx.bodies), EnrollRequest)
    client, key = _authority(ctx)
    try:
        _precheck(req, ctx, key, now)
        issued = await _relay(client, req)
    except EnrollmentRefusedError as exc:
        raise ApiError(exc.status, exc.code, exc.detail) from exc
    body = _check_issued(issued, req, key)
    if _store(ctx, req, issued, now):
        payload: dict[str, PayloadValue] = {
            "device": issued.device_id,
            "serial": body.serial,
            "client_index": body.client_index,
            "certificate_sha256": certificate_digest(issued.certificate).hex(),
        }
        ctx.ledger.append("enroll", "server", payload, now)
    resp = EnrollResponse(
        device_id=issued.device_id,
        client_index=issued.client_index,
        certificate=issued.certificate,
        authority=issued.authority,
        server_public_key=ctx.identity.public_key,
        server_scheme="mldsa65",
    )
    return msgpack_response(resp, 201)
