"""Committed Shamir shares: what lets a server drop a bad share and check a reconstruction.

An owner commits to every share it deals (``H(scope, owner, holder, kind, share, salt)``, the salt
travelling with the share to its holder) and to every secret it shares; the commitments go to the
server with the owner's signed message. A holder checks its shares against them when it receives
them, so a later mismatch is the holder's fault; the server checks every released share and
every reconstructed secret, so a wrong share is dropped and named instead of silently changing
the sum. Used by SecAgg and CHRONOS alike.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from qflare.crypto import SecretBytes
from qflare.crypto.shamir import PRIME, SHARE_BYTES

__all__ = [
    "COMMITMENT_BYTES",
    "RELEASED_SHARE_BYTES",
    "SALT_BYTES",
    "is_share",
    "opened_share",
    "secret_commitment",
    "share_commitment",
]

SALT_BYTES: Final = 16
COMMITMENT_BYTES: Final = 32
RELEASED_SHARE_BYTES: Final = SHARE_BYTES + SALT_BYTES
_SHARE_DOMAIN: Final = b"qflare/shares/v1/share"
_SECRET_DOMAIN: Final = b"qflare/shares/v1/secret"


def _frame(*parts: bytes | str | int) -> bytes:
    out = bytearray()
    for part in parts:
        raw = part.encode() if isinstance(part, str) else part
        raw = raw.to_bytes(8, "big", signed=True) if isinstance(raw, int) else raw
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def share_commitment(
    scope: str, owner: int, holder: int, kind: str, share: bytes, salt: bytes
) -> bytes:
    """Hiding (salted), binding commitment to ``owner``'s share of ``kind`` held by ``holder``."""
    data = _frame(scope, owner, holder, kind, share, salt)
    return hashlib.sha256(_SHARE_DOMAIN + data).digest()


def secret_commitment(scope: str, owner: int, kind: str, secret: SecretBytes) -> bytes:
    """Commitment to a shared 32-byte secret (checks its reconstruction)."""
    return hashlib.sha256(_SECRET_DOMAIN + _frame(scope, owner, kind, secret.reveal())).digest()


def is_share(share: bytes) -> bool:
    """Whether ``share`` is a well-formed share (33 bytes, a field element)."""
    return len(share) == SHARE_BYTES and int.from_bytes(share, "big") < PRIME


def opened_share(
    scope: str, owner: int, holder: int, kind: str, released: bytes, commitment: bytes
) -> bytes | None:
    """The share inside ``released`` (share || salt) if it opens ``commitment``, else ``None``."""
    if len(released) != RELEASED_SHARE_BYTES or len(commitment) != COMMITMENT_BYTES:
        return None
    share, salt = released[:SHARE_BYTES], released[SHARE_BYTES:]
    mine = share_commitment(scope, owner, holder, kind, share, salt)
    return share if is_share(share) and hmac.compare_digest(mine, commitment) else None
