"""What devices did: notices they sent (declined rounds, leaving) and rounds that named them.

An operator sees both in ``qflare device list``; the coordinator leaves devices named as
culprits out of the next rounds for a while (a malicious device cannot spoil round after round).
"""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from qflare.store.models import Device, Round

__all__ = ["record_notice", "recent_culprits", "set_culprits", "set_survivors"]


def record_notice(db: Session, device_id: str, text: str, now: float) -> None:
    """Keep a device's latest notice (``kind: reason: detail``, truncated)."""
    device = db.get(Device, device_id)
    if device is not None:
        device.last_notice, device.last_notice_at = text[:300], now


def set_culprits(db: Session, round_id: int, culprits: dict[int, str]) -> None:
    """Name the clients a round found misbehaving (client index -> what they did)."""
    row = db.get(Round, round_id)
    if row is not None and culprits:
        row.culprits = json.dumps({str(k): v[:200] for k, v in sorted(culprits.items())})


def set_survivors(db: Session, round_id: int, survivors: tuple[int, ...]) -> None:
    """Record whose inputs are in a round's sum (client indices)."""
    row = db.get(Round, round_id)
    if row is not None:
        row.survivors = json.dumps(sorted(survivors))


def recent_culprits(db: Session, rounds: int) -> set[str]:
    """Device ids named as culprits in the last ``rounds`` closed rounds."""
    if rounds <= 0:
        return set()
    rows = db.scalars(
        select(Round).where(Round.closed_at.is_not(None)).order_by(Round.id.desc()).limit(rounds)
    ).all()
    out: set[str] = set()
    for row in rows:
        if not row.culprits:
            continue
        devices = json.loads(row.devices)
        out |= {devices[i] for i in json.loads(row.culprits) if i in devices}
    return out
