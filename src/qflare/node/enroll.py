"""Enrollment: make the device's keys (once), trade a one-time token for a device certificate.

Only public keys leave the device. The token (from the operator, ``qflare authority token
create``) holds claims signed by the enrollment authority and a secret; the node sends the claims
and an HMAC proof over its own public keys under that secret, never the secret, so the server that
relays the request cannot enroll other keys with it. The answer is checked before anything is
kept: the authority key must be the one the token names, the certificate must verify against it
and bind this device's keys. Both, and the server's key, are pinned in ``device.json``.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path

from qflare.crypto import Rng, SignatureScheme
from qflare.node.state import DeviceRecord, NodeState, StateError
from qflare.node.transport import HttpApi, TransportError
from qflare.protocol.identity import (
    IdentityError,
    SignedToken,
    TokenClaims,
    decode_authority_key,
    decode_claims,
    enrollment_proof,
    parse_token,
    verify_certificate,
    verify_token,
)
from qflare.protocol.wire import EnrollRequest, EnrollResponse

__all__ = ["AlreadyEnrolledError", "EnrollmentRejectedError", "InvalidTokenError", "enroll"]

log = logging.getLogger("qflare.node")


class AlreadyEnrolledError(StateError):
    """The state directory already holds an enrolled device."""


class InvalidTokenError(ValueError):
    """The text given as a token is not a QFLARE enrollment token."""


class EnrollmentRejectedError(TransportError):
    """The server's answer does not hold up: wrong authority, forged or foreign certificate."""


def _read_token(token: str) -> tuple[SignedToken, TokenClaims]:
    try:
        signed = parse_token(token)
        return signed, decode_claims(signed.claims)
    except IdentityError as exc:
        raise InvalidTokenError(f"not a QFLARE enrollment token: {exc}") from None


def _check_answer(
    response: EnrollResponse, token: SignedToken, claims: TokenClaims, request: EnrollRequest
) -> None:
    """Refuse an answer that does not come from the token's authority or binds other keys.

    Raises:
        EnrollmentRejectedError: with what is wrong.
    """
    try:
        authority = decode_authority_key(response.authority)
        if not hmac.compare_digest(authority.fingerprint, claims.authority):
            raise EnrollmentRejectedError(
                "the server answered with another authority key than the one the token names"
            )
        verify_token(token.claims, token.signature, authority)
        body = verify_certificate(response.certificate, authority)
    except IdentityError as exc:
        raise EnrollmentRejectedError(f"the enrollment answer is refused: {exc}") from exc
    mine = (
        body.scheme.value == request.scheme
        and hmac.compare_digest(body.identity_pk, request.identity_pk)
        and hmac.compare_digest(body.kem_pk, request.kem_pk)
        and body.device_id == response.device_id
        and body.client_index == response.client_index
    )
    if not mine:
        raise EnrollmentRejectedError("the certificate in the answer is not for this device's keys")
    try:
        SignatureScheme(response.server_scheme)  # refuse a scheme we cannot verify
    except ValueError:
        raise EnrollmentRejectedError(f"unknown server scheme {response.server_scheme!r}") from None


def _enrolled(state: NodeState, state_dir: Path) -> None:
    existing = state.device
    if existing is not None and existing.authority and existing.certificate:
        raise AlreadyEnrolledError(
            f"{state_dir} is already enrolled as device {existing.device_id}"
        )


def enroll(
    state_dir: Path,
    api: HttpApi,
    token: str,
    *,
    scheme: SignatureScheme,
    rng: Rng,
    ca_pem: bytes | None = None,
) -> DeviceRecord:
    """Enroll a node: create its keys in ``state_dir`` if needed and have them certified.

    A failed attempt keeps the keys, so it can be retried with another token. A node enrolled
    before enrollment authorities existed may enroll again (its keys are kept).

    Args:
        state_dir: The node's state directory.
        api: Transport to the server.
        token: Single-use enrollment token from the operator.
        scheme: Identity signature scheme of the federation.
        rng: Randomness for the key seeds (the OS CSPRNG).
        ca_pem: CA certificate to keep for later runs (optional).

    Returns:
        The enrollment record that was stored.

    Raises:
        InvalidTokenError: ``token`` is not an enrollment token.
        AlreadyEnrolledError: ``state_dir`` is already enrolled.
        EnrollmentRejectedError: the answer is not from the token's authority or not for our keys.
        qflare.node.transport.ServerError: the server or the authority refused (the exception's
            ``code`` says why: ``token_unknown``, ``token_used``, ``bad_proof``, ...).
        qflare.node.transport.NetworkError: the server could not be reached.
    """
    signed, claims = _read_token(token)
    state = NodeState.create(state_dir, scheme, rng)
    _enrolled(state, state_dir)
    identity_pk, kem_pk = state.signer().public_key, state.kem().public_key
    request = EnrollRequest(
        claims=signed.claims,
        signature=signed.signature,
        proof=enrollment_proof(signed.secret, signed.claims, scheme.value, identity_pk, kem_pk),
        scheme=scheme.value,
        identity_pk=identity_pk,
        kem_pk=kem_pk,
    )
    response = api.enroll(request)
    _check_answer(response, signed, claims, request)
    record = DeviceRecord(
        device_id=response.device_id,
        server_url=api.base_url,
        server_public_key=response.server_public_key,
        server_scheme=response.server_scheme,
        authority=response.authority,
        certificate=response.certificate,
    )
    state.save_device(record)
    if ca_pem is not None:
        state.save_ca(ca_pem)
    log.info(
        "enrolled",
        extra={
            "device": record.device_id,
            "client_index": response.client_index,
            "server": record.server_url,
            "authority_sha256": claims.authority.hex(),
        },
    )
    return record
