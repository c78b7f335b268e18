"""The authority's own tables (its own metadata: never part of the server's schema).

Tokens are stored by id only: each token's secret is derived from the authority key when needed.
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, LargeBinary, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class AuthorityBase(DeclarativeBase):
    """Declarative base of the authority's tables."""


class TokenRow(AuthorityBase):
    """A single-use enrollment token."""

    __tablename__ = "authority_tokens"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[float]
    expires_at: Mapped[float]
    used_at: Mapped[float | None] = mapped_column(default=None)
    revoked_at: Mapped[float | None] = mapped_column(default=None)
    device_id: Mapped[str | None] = mapped_column(String(32), default=None)


class CertificateRow(AuthorityBase):
    """A device certificate the authority issued (every one, forever)."""

    __tablename__ = "authority_certificates"

    serial: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    device_id: Mapped[str] = mapped_column(String(32), unique=True)
    client_index: Mapped[int] = mapped_column(unique=True)
    token_id: Mapped[str] = mapped_column(ForeignKey("authority_tokens.id"), unique=True)
    certificate: Mapped[bytes] = mapped_column(LargeBinary)
    issued_at: Mapped[float]
