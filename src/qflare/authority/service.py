"""What the authority does: make and revoke tokens, and issue one certificate per token.

:meth:`AuthorityService.issue` is the whole enrollment check: the token's signature and expiry,
the holder's proof over the device keys (keyed by the token secret, re-derived from the
authority key), the keys' shape, then single use in one database transaction. A retry of an
issued request (same token, same keys, valid proof) gets the same certificate back, so a lost
answer does not cost the token.
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Callable

from qflare.authority.keys import AuthorityKeys, load_authority
from qflare.authority.settings import AuthoritySettings
from qflare.authority.store import AuthorityStore, CertificateRecord, TokenRecord
from qflare.crypto import Rng, SignatureScheme
from qflare.protocol.identity import (
    AuthorityKey,
    CertificateBody,
    TokenClaims,
    encode_authority_key,
    enrollment_proof,
    issue_certificate,
    issue_token,
    parse_certificate,
)
from qflare.protocol.wire import (
    EnrollmentRefusedError,
    EnrollRequest,
    IssuedCertificate,
    check_device_keys,
    check_token,
)

__all__ = ["AuthorityService", "CertificateRecord", "TokenRecord"]

log = logging.getLogger("qflare.authority")
MAX_LABEL = 200
_REFUSALS = {
    "used": (409, "token_used", "this enrollment token was already used"),
    "revoked": (403, "token_revoked", "this enrollment token was revoked"),
    "expired": (410, "token_expired", "this enrollment token has expired"),
}
_UNKNOWN = (401, "token_unknown", "this authority has no record of the token")


class AuthorityService:
    """The enrollment authority over its keys and its database.

    Args:
        keys: The authority key pair.
        store: The authority's database.
        clock: Time source (Unix seconds).
        rng: Randomness for token and device ids.
        max_token_ttl_s: Longest token lifetime.
    """

    def __init__(
        self,
        keys: AuthorityKeys,
        store: AuthorityStore,
        *,
        clock: Callable[[], float],
        rng: Rng,
        max_token_ttl_s: float = 30 * 86_400.0,
    ) -> None:
        self._keys, self._store, self._clock, self._rng = keys, store, clock, rng
        self._max_ttl = max_token_ttl_s

    @classmethod
    def open(
        cls, settings: AuthoritySettings, *, clock: Callable[[], float], rng: Rng
    ) -> AuthorityService:
        """Load the key from ``settings.dir`` and open (creating) the authority's database.

        Raises:
            FileNotFoundError: no ``authority.key`` (run ``qflare authority init``).
            PermissionError: the key file is readable by group or others.
            ValueError: the key file is malformed.
        """
        keys = load_authority(settings.dir)
        store = AuthorityStore(settings.db_url)
        return cls(keys, store, clock=clock, rng=rng, max_token_ttl_s=settings.max_token_ttl_s)

    def close(self) -> None:
        """Release the database."""
        self._store.close()

    @property
    def public(self) -> AuthorityKey:
        """The authority's public key (what nodes and the server pin)."""
        return self._keys.public

    # ---- tokens -------------------------------------------------------------------------------

    def create_token(self, ttl_s: float, label: str = "") -> tuple[TokenRecord, str]:
        """Make a single-use token; return its record and its text (shown once, never stored).

        Raises:
            ValueError: a lifetime that is not finite and in ``(0, max_token_ttl_s]``, or a label
                longer than 200 characters.
        """
        if not (math.isfinite(ttl_s) and 0 < ttl_s <= self._max_ttl):
            raise ValueError(f"token lifetime must be in (0, {self._max_ttl:g}] seconds")
        if len(label) > MAX_LABEL:
            raise ValueError(f"token label longer than {MAX_LABEL} characters")
        now = self._clock()
        token_id = self._rng.random_bytes(16).hex()
        claims = TokenClaims(
            token_id=token_id,
            authority=self.public.fingerprint,
            label=label,
            expires_at=now + ttl_s,
        )
        record = TokenRecord(
            token_id=token_id, label=label, created_at=now, expires_at=claims.expires_at
        )
        self._store.add_token(record)
        log.info("token created", extra={"token_id": token_id, "expires_at": claims.expires_at})
        return record, issue_token(self._keys.signer, claims, self._keys.token_secret(token_id))

    def revoke_token(self, token_id: str) -> bool:
        """Revoke an unused token; True if one was revoked."""
        return self._store.revoke_token(token_id, self._clock())

    def tokens(self) -> list[TokenRecord]:
        """Every token, newest first."""
        return self._store.tokens()

    def certificates(self) -> list[CertificateRecord]:
        """Every issued certificate, by serial."""
        return self._store.certificates()

    # ---- enrollment ---------------------------------------------------------------------------

    def issue(self, request: EnrollRequest) -> IssuedCertificate:
        """Issue the device certificate an enrollment request asks for.

        Raises:
            EnrollmentRefusedError: ``bad_token``, ``wrong_authority``, ``token_forged``,
                ``token_expired``, ``bad_proof``, ``wrong_scheme``, ``bad_identity_key``,
                ``bad_kem_key``, ``token_unknown``, ``token_revoked`` or ``token_used``.
        """
        now = self._clock()
        claims = check_token(request.claims, request.signature, self.public, now)
        self._check_proof(request, claims.token_id)
        check_device_keys(request.scheme, request.identity_pk, request.kem_pk)
        device_id = self._rng.random_bytes(16).hex()

        def sign(serial: int, index: int) -> bytes:
            return self._certificate(request, device_id, serial, index, now)

        record = self._store.issue(claims.token_id, device_id, now, sign)
        if record is None:
            record = self._replay(claims.token_id, request, now)
        else:
            log.info(
                "certificate issued",
                extra={"serial": record.serial, "device": device_id, "index": record.client_index},
            )
        return IssuedCertificate(
            device_id=record.device_id,
            client_index=record.client_index,
            certificate=record.certificate,
            authority=encode_authority_key(self.public),
        )

    def _check_proof(self, request: EnrollRequest, token_id: str) -> None:
        expected = enrollment_proof(
            self._keys.token_secret(token_id),
            request.claims,
            request.scheme,
            request.identity_pk,
            request.kem_pk,
        )
        if not hmac.compare_digest(expected, request.proof):
            raise EnrollmentRefusedError(
                401,
                "bad_proof",
                "the request does not prove possession of the token for these keys",
            )

    def _certificate(
        self, request: EnrollRequest, device_id: str, serial: int, index: int, now: float
    ) -> bytes:
        body = CertificateBody(
            authority=self.public.fingerprint,
            serial=serial,
            device_id=device_id,
            client_index=index,
            scheme=SignatureScheme(request.scheme),
            identity_pk=request.identity_pk,
            kem_pk=request.kem_pk,
            issued_at=now,
        )
        return issue_certificate(self._keys.signer, body)

    def _replay(self, token_id: str, request: EnrollRequest, now: float) -> CertificateRecord:
        """The certificate already issued for these very keys, or the token's refusal."""
        token = self._store.token(token_id)
        status = token.status(now) if token is not None else "unknown"
        if status == "used":
            issued = self._store.certificate_for_token(token_id)
            if issued is not None and _binds(parse_certificate(issued.certificate), request):
                return issued
        raise EnrollmentRefusedError(*_REFUSALS.get(status, _UNKNOWN))


def _binds(body: CertificateBody, request: EnrollRequest) -> bool:
    return (
        body.scheme.value == request.scheme
        and hmac.compare_digest(body.identity_pk, request.identity_pk)
        and hmac.compare_digest(body.kem_pk, request.kem_pk)
    )
