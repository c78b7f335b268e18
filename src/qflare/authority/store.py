"""The authority's database: tokens and the certificates issued with them.

Issuing is one transaction: a conditional UPDATE marks the token used (only one request can
win it), then the next serial and client index are taken and the certificate is stored.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from qflare.authority.models import AuthorityBase, CertificateRow, TokenRow
from qflare.store.db import make_engine, session_factory

__all__ = ["AuthorityStore", "CertificateRecord", "TokenRecord"]


class TokenRecord(msgspec.Struct, frozen=True, kw_only=True):
    """An enrollment token as the authority lists it (never its text or secret).

    Attributes:
        token_id: Token id (in the signed claims).
        label: Operator's note.
        created_at: Creation time (Unix seconds).
        expires_at: Expiry (Unix seconds).
        used_at: When a device enrolled with it.
        revoked_at: When the operator revoked it.
        device_id: The device enrolled with it.
    """

    token_id: str
    label: str
    created_at: float
    expires_at: float
    used_at: float | None = None
    revoked_at: float | None = None
    device_id: str | None = None

    def status(self, now: float) -> str:
        """``used``, ``revoked``, ``expired`` or ``live``."""
        if self.used_at is not None:
            return "used"
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at <= now else "live"


class CertificateRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A certificate the authority issued.

    Attributes:
        serial: Issue number (1, 2, ... without gaps).
        device_id: Device id in the certificate.
        client_index: Client index in the certificate.
        token_id: The token it was issued for.
        certificate: The encoded, signed certificate.
        issued_at: Issue time (Unix seconds).
    """

    serial: int
    device_id: str
    client_index: int
    token_id: str
    certificate: bytes
    issued_at: float


# Builds the certificate for (serial, client index) inside the issuing transaction.
Sign = Callable[[int, int], bytes]


def _token(row: TokenRow) -> TokenRecord:
    return TokenRecord(
        token_id=row.id,
        label=row.label,
        created_at=row.created_at,
        expires_at=row.expires_at,
        used_at=row.used_at,
        revoked_at=row.revoked_at,
        device_id=row.device_id,
    )


def _cert(row: CertificateRow) -> CertificateRecord:
    return CertificateRecord(
        serial=row.serial,
        device_id=row.device_id,
        client_index=row.client_index,
        token_id=row.token_id,
        certificate=row.certificate,
        issued_at=row.issued_at,
    )


def _next(db: Session, column: object, first: int) -> int:
    top = db.scalar(select(func.max(column)))
    return first if top is None else int(top) + 1


class AuthorityStore:
    """The authority's tables over SQLAlchemy (a SQLite file by default).

    Args:
        url: Database URL; the tables are created if missing.
    """

    def __init__(self, url: str) -> None:
        self._engine = make_engine(url)
        AuthorityBase.metadata.create_all(self._engine)
        self._factory = session_factory(self._engine)

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def add_token(self, record: TokenRecord) -> None:
        """Store a new token."""
        with self._factory() as db, db.begin():
            db.add(
                TokenRow(
                    id=record.token_id,
                    label=record.label,
                    created_at=record.created_at,
                    expires_at=record.expires_at,
                )
            )

    def tokens(self) -> list[TokenRecord]:
        """Every token, newest first."""
        with self._factory() as db:
            rows = db.scalars(select(TokenRow).order_by(TokenRow.created_at.desc())).all()
            return [_token(r) for r in rows]

    def token(self, token_id: str) -> TokenRecord | None:
        """One token, or ``None``."""
        with self._factory() as db:
            row = db.get(TokenRow, token_id)
            return None if row is None else _token(row)

    def revoke_token(self, token_id: str, now: float) -> bool:
        """Revoke an unused, unrevoked token; True if one was revoked."""
        stmt = (
            update(TokenRow)
            .where(
                TokenRow.id == token_id, TokenRow.used_at.is_(None), TokenRow.revoked_at.is_(None)
            )
            .values(revoked_at=now)
        )
        with self._factory() as db, db.begin():
            return db.execute(stmt).rowcount == 1  # type: ignore[attr-defined, no-any-return]

    def issue(
        self, token_id: str, device_id: str, now: float, sign: Sign
    ) -> CertificateRecord | None:
        """Use token ``token_id`` for ``device_id`` and store the certificate ``sign`` makes.

        Returns:
            The new certificate, or ``None`` when the token is not live (unknown, used, revoked
            or expired); nothing is written then.
        """
        stmt = (
            update(TokenRow)
            .where(
                TokenRow.id == token_id,
                TokenRow.used_at.is_(None),
                TokenRow.revoked_at.is_(None),
                TokenRow.expires_at > now,
            )
            .values(used_at=now, device_id=device_id)
            .execution_options(synchronize_session=False)
        )
        with self._factory() as db, db.begin():
            if db.execute(stmt).rowcount != 1:  # type: ignore[attr-defined]
                return None
            serial = _next(db, CertificateRow.serial, 1)
            index = _next(db, CertificateRow.client_index, 0)
            row = CertificateRow(
                serial=serial,
                device_id=device_id,
                client_index=index,
                token_id=token_id,
                certificate=sign(serial, index),
                issued_at=now,
            )
            db.add(row)
            return _cert(row)

    def certificate_for_token(self, token_id: str) -> CertificateRecord | None:
        """The certificate issued with ``token_id``, if any."""
        with self._factory() as db:
            row = db.scalar(select(CertificateRow).where(CertificateRow.token_id == token_id))
            return None if row is None else _cert(row)

    def certificates(self) -> list[CertificateRecord]:
        """Every issued certificate, by serial."""
        with self._factory() as db:
            rows = db.scalars(select(CertificateRow).order_by(CertificateRow.serial)).all()
            return [_cert(r) for r in rows]
