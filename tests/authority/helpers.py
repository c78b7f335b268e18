"""An in-process enrollment authority for tests (server, node and authority tests share it)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from qflare.authority import (
    AUTHORITY_KEY_FILE,
    AUTHORITY_PUB_FILE,
    AuthorityKeys,
    AuthorityService,
    init_authority,
    load_authority,
)
from qflare.authority.store import AuthorityStore, TokenRecord
from qflare.crypto import HybridKem, SignatureScheme, Signer, SystemRng, make_signer
from qflare.protocol.identity import (
    TokenClaims,
    decode_claims,
    enrollment_proof,
    issue_token,
    parse_token,
)
from qflare.protocol.wire import EnrollRequest


class ShiftClock:
    """Wall-clock time plus an adjustable offset (to mint tokens that are already expired)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class TestAuthority:
    """A real :class:`AuthorityService` over a temporary directory."""

    __test__ = False

    service: AuthorityService
    keys: AuthorityKeys
    directory: Path
    clock: ShiftClock

    @property
    def pub(self) -> Path:
        """The ``authority.pub`` file a server pins."""
        return self.directory / AUTHORITY_PUB_FILE

    def token(
        self, *, ttl: float = 3600.0, label: str = "", revoked: bool = False, expired: bool = False
    ) -> str:
        """A token from the authority: live, revoked, or one that expired an hour ago."""
        self.clock.offset = -2 * ttl if expired else 0.0
        try:
            record, text = self.service.create_token(ttl, label)
        finally:
            self.clock.offset = 0.0
        if revoked:
            assert self.service.revoke_token(record.token_id)
        return text

    def token_row(self, text: str) -> TokenRecord:
        """The authority's record of a token."""
        token_id = decode_claims(parse_token(text).claims).token_id
        (row,) = [t for t in self.service.tokens() if t.token_id == token_id]
        return row

    def close(self) -> None:
        self.service.close()


def make_authority(directory: Path) -> TestAuthority:
    """Open the authority in ``directory`` (made there first if it is not yet)."""
    exists = (directory / AUTHORITY_KEY_FILE).exists()
    keys = load_authority(directory) if exists else init_authority(directory, SystemRng())
    clock = ShiftClock()
    store = AuthorityStore(f"sqlite:///{directory}/authority.sqlite")
    service = AuthorityService(keys, store, clock=clock, rng=SystemRng())
    return TestAuthority(service, keys, directory, clock)


def token_with(signer: Signer, authority_fingerprint: bytes, *, expires_at: float) -> str:
    """A token with arbitrary claims, signed by ``signer`` (forgeries, NaN expiries)."""
    claims = TokenClaims(token_id="f" * 32, authority=authority_fingerprint, expires_at=expires_at)
    return issue_token(signer, claims, b"\x07" * 32)


def request_for(
    token: str,
    signer: Signer | None = None,
    kem_pk: bytes | None = None,
    scheme: str = "mldsa65",
) -> EnrollRequest:
    """An honest node's enrollment request for ``token`` (fresh keys unless given)."""
    rng = SystemRng()
    signer = signer or make_signer(SignatureScheme(scheme), rng)
    kem_pk = kem_pk or HybridKem.generate(rng).public_key
    signed = parse_token(token)
    proof = enrollment_proof(signed.secret, signed.claims, scheme, signer.public_key, kem_pk)
    return EnrollRequest(
        claims=signed.claims,
        signature=signed.signature,
        proof=proof,
        scheme=scheme,
        identity_pk=signer.public_key,
        kem_pk=kem_pk,
    )
