"""Tables of the QFLARE server. Times are UNIX seconds (float); blobs are msgpack or raw bytes.

No secret key material is stored here: devices by their public keys and the certificate the
enrollment authority issued for them, sessions only in server memory. Enrollment tokens belong to
the authority (its own database), not to the server.
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, Index, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of all QFLARE tables."""


class Device(Base):
    """An enrolled edge device: public keys and its certificate from the enrollment authority.

    ``certificate`` is ``None`` only for devices enrolled before the authority existed; the
    migration that introduced it revoked them.
    """

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    client_index: Mapped[int] = mapped_column(unique=True)
    identity_pk: Mapped[bytes] = mapped_column(LargeBinary)
    kem_pk: Mapped[bytes] = mapped_column(LargeBinary)
    scheme: Mapped[str] = mapped_column(String(16))
    enrolled_at: Mapped[float]
    revoked_at: Mapped[float | None] = mapped_column(default=None)
    certificate: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    last_notice: Mapped[str | None] = mapped_column(String(300), default=None)
    last_notice_at: Mapped[float | None] = mapped_column(default=None)


class Round(Base):
    """One secure-aggregation round and its outcome."""

    __tablename__ = "rounds"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    state: Mapped[str] = mapped_column(String(32))
    config: Mapped[bytes] = mapped_column(LargeBinary)
    devices: Mapped[str] = mapped_column(String)  # JSON: client index -> device id
    model_version: Mapped[int]
    opened_at: Mapped[float]
    deadline_at: Mapped[float]
    closed_at: Mapped[float | None] = mapped_column(default=None)
    result: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    abort_reason: Mapped[str | None] = mapped_column(String(200), default=None)
    culprits: Mapped[str | None] = mapped_column(String, default=None)  # JSON: index -> what
    survivors: Mapped[str | None] = mapped_column(String, default=None)  # JSON: indices in sum


class RoundEvent(Base):
    """Append-only log of what the round's server machine accepted, for crash recovery."""

    __tablename__ = "round_events"
    __table_args__ = (
        UniqueConstraint("round_id", "seq"),
        Index("ix_round_events_round", "round_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    seq: Mapped[int]
    kind: Mapped[str] = mapped_column(String(16))  # message | masked | advance | drop
    sender: Mapped[int | None] = mapped_column(default=None)
    payload: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)


class RoundSum(Base):
    """The persisted running sum of masked inputs of a round (O(d))."""

    __tablename__ = "round_sums"

    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), primary_key=True)
    acc: Mapped[bytes] = mapped_column(LargeBinary)
    included: Mapped[int] = mapped_column(default=0)


class ModelVersion(Base):
    """A global model (flat float32 weights)."""

    __tablename__ = "models"

    version: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    weights: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float]
    round_id: Mapped[int | None] = mapped_column(default=None)


class AuditRow(Base):
    """One encoded audit-ledger entry, by index."""

    __tablename__ = "audit_entries"

    index: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary)
