"""Repository functions: every write that must be atomic is one statement or one transaction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from qflare.store.models import (
    AuditRow,
    Device,
    ModelVersion,
    Round,
    RoundEvent,
    RoundSum,
)


def add_device(
    db: Session,
    *,
    device_id: str,
    identity_pk: bytes,
    kem_pk: bytes,
    scheme: str,
    now: float,
    client_index: int | None = None,
    certificate: bytes | None = None,
) -> Device:
    """Register a device.

    Args:
        db: Session (inside the caller's transaction).
        device_id: Device id.
        identity_pk: Identity public key.
        kem_pk: Long-term KEM public key.
        scheme: Identity scheme.
        now: Enrollment time.
        client_index: The index its certificate names (``None``: the next free one, for
            simulations and benchmarks without an authority).
        certificate: Its certificate from the enrollment authority.

    Raises:
        sqlalchemy.exc.IntegrityError: the id or the client index is taken (at flush).
    """
    if client_index is None:
        top = db.scalar(select(func.coalesce(func.max(Device.client_index), -1)))
        client_index = int(top if top is not None else -1) + 1
    row = Device(
        id=device_id,
        client_index=client_index,
        identity_pk=identity_pk,
        kem_pk=kem_pk,
        scheme=scheme,
        enrolled_at=now,
        certificate=certificate,
    )
    db.add(row)
    db.flush()
    return row


def get_device(db: Session, device_id: str) -> Device | None:
    """A device by id."""
    return db.get(Device, device_id)


def active_devices(db: Session) -> Sequence[Device]:
    """Devices that are not revoked, by client index."""
    return db.scalars(
        select(Device).where(Device.revoked_at.is_(None)).order_by(Device.client_index)
    ).all()


def all_devices(db: Session) -> Sequence[Device]:
    """Every device, by client index."""
    return db.scalars(select(Device).order_by(Device.client_index)).all()


def revoke_device(db: Session, device_id: str, now: float) -> bool:
    """Revoke a device; True if it was active."""
    stmt = (
        update(Device)
        .where(Device.id == device_id, Device.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return db.execute(stmt).rowcount == 1  # type: ignore[attr-defined, no-any-return]


@dataclass(frozen=True)
class EventRecord:
    """One logged round event."""

    seq: int
    kind: str
    sender: int | None
    payload: bytes | None


def append_event(
    db: Session,
    round_id: int,
    seq: int,
    kind: str,
    sender: int | None = None,
    payload: bytes | None = None,
) -> None:
    """Append to a round's event log (unique (round, seq): a lost race raises)."""
    db.add(RoundEvent(round_id=round_id, seq=seq, kind=kind, sender=sender, payload=payload))


def round_events(db: Session, round_id: int) -> list[EventRecord]:
    """A round's events in order."""
    rows = db.scalars(
        select(RoundEvent).where(RoundEvent.round_id == round_id).order_by(RoundEvent.seq)
    ).all()
    return [EventRecord(r.seq, r.kind, r.sender, r.payload) for r in rows]


def save_sum(db: Session, round_id: int, acc: bytes, included: int) -> None:
    """Insert or update the running sum of a round."""
    row = db.get(RoundSum, round_id)
    if row is None:
        db.add(RoundSum(round_id=round_id, acc=acc, included=included))
    else:
        row.acc, row.included = acc, included


def load_sum(db: Session, round_id: int) -> RoundSum | None:
    """The persisted running sum of a round, if any."""
    return db.get(RoundSum, round_id)


def open_rounds(db: Session) -> Sequence[Round]:
    """Rounds that are neither completed nor aborted."""
    return db.scalars(select(Round).where(Round.closed_at.is_(None)).order_by(Round.id)).all()


def rounds(db: Session, limit: int = 100) -> Sequence[Round]:
    """Most recent rounds first."""
    return db.scalars(select(Round).order_by(Round.id.desc()).limit(limit)).all()


def count_rounds(db: Session, state: str) -> int:
    """Number of rounds in ``state``."""
    return int(db.scalar(select(func.count()).select_from(Round).where(Round.state == state)) or 0)


def next_round_id(db: Session) -> int:
    """Round ids are never reused: one more than the largest ever stored."""
    return int(db.scalar(select(func.coalesce(func.max(Round.id), 0))) or 0) + 1


def latest_model(db: Session) -> ModelVersion | None:
    """The newest global model."""
    return db.scalar(select(ModelVersion).order_by(ModelVersion.version.desc()).limit(1))


def put_model(db: Session, version: int, weights: bytes, now: float, round_id: int | None) -> None:
    """Store a global model version."""
    db.add(ModelVersion(version=version, weights=weights, created_at=now, round_id=round_id))


class SqlLedgerStore:
    """:class:`qflare.ledger.LedgerStore` over the ``audit_entries`` table.

    Args:
        factory: Session factory (each call runs in its own transaction).
    """

    def __init__(self, factory: object) -> None:
        self._factory = factory

    def _session(self) -> Session:
        session = self._factory()  # type: ignore[operator]
        assert isinstance(session, Session)
        return session

    def append_entry(self, index: int, data: bytes) -> None:
        """Append entry ``index``; raises if it is not the next index."""
        with self._session() as db, db.begin():
            size = db.scalar(select(func.count()).select_from(AuditRow)) or 0
            if index != size:
                raise ValueError(f"ledger append at {index}, size is {size}")
            db.add(AuditRow(index=index, data=data))

    def entries(self, start: int = 0, stop: int | None = None) -> Iterable[bytes]:
        """Encoded entries in ``[start, stop)``."""
        with self._session() as db:
            stmt = select(AuditRow.data).where(AuditRow.index >= start).order_by(AuditRow.index)
            if stop is not None:
                stmt = stmt.where(AuditRow.index < stop)
            return list(db.scalars(stmt).all())

    def size(self) -> int:
        """Number of entries."""
        with self._session() as db:
            return db.scalar(select(func.count()).select_from(AuditRow)) or 0
