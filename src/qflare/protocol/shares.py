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
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, Final

from qflare.crypto import SecretBytes, Shamir, ShamirError
from qflare.crypto.shamir import PRIME, SHARE_BYTES

__all__ = [
    "COMMITMENT_BYTES",
    "RELEASED_SHARE_BYTES",
    "SALT_BYTES",
    "ReconstructionError",
    "SharedSecret",
    "rebuild_secret",
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
    return b"".join(_field(p) for p in parts)


def _field(part: bytes | str | int) -> bytes:
    raw = part.encode() if isinstance(part, str) else part
    raw = raw.to_bytes(8, "big", signed=True) if isinstance(raw, int) else raw
    return len(raw).to_bytes(4, "big") + raw


@lru_cache(maxsize=256)
def _prefix(scope: str, kind: str) -> Any:
    return hashlib.sha256(_SHARE_DOMAIN + _frame(scope, kind))


def share_commitment(
    scope: str, owner: int, holder: int, kind: str, share: bytes, salt: bytes
) -> bytes:
    """Hiding (salted), binding commitment to ``owner``'s share of ``kind`` held by ``holder``."""
    h = _prefix(scope, kind).copy()
    h.update(_frame(owner, holder, share, salt))
    digest: bytes = h.digest()
    return digest


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


class ReconstructionError(ShamirError):
    """A secret of ``owner`` could not be rebuilt from good shares.

    Args:
        owner: The client whose secret failed.
        why: What went wrong.
        proven: Whether the owner is provably at fault (its own committed shares are
            inconsistent) rather than short of good shares (dropouts, bad holders, or a server
            tampering with relayed ciphertexts could cause that).
    """

    def __init__(self, owner: int, why: str, *, proven: bool = False) -> None:
        super().__init__(f"client {owner}: {why}")
        self.owner, self.proven = owner, proven


class SharedSecret:
    """One secret to rebuild: whose, which kind, its released shares and how to check it.

    Args:
        scope: The commitment scope (protocol, session, round or epoch).
        owner: The client who dealt the shares.
        kind: The share kind its commitments were made for.
        released: Holder -> released ``share || salt``.
        x_of: Holder -> its Shamir evaluation point.
        commitment_of: Holder -> the owner's commitment to that holder's share.
        check: Whether a rebuilt secret is the one the owner committed to.
    """

    def __init__(
        self,
        scope: str,
        owner: int,
        kind: str,
        released: Mapping[int, bytes],
        x_of: Callable[[int], int],
        commitment_of: Callable[[int], bytes],
        check: Callable[[SecretBytes], bool],
    ) -> None:
        self.scope, self.owner, self.kind = scope, owner, kind
        self.released = {h: r for h, r in released.items() if len(r) == RELEASED_SHARE_BYTES}
        self.x_of, self.commitment_of, self.check = x_of, commitment_of, check

    def points(self, holders: Mapping[int, bytes]) -> dict[int, bytes]:
        """Shamir points of the given released shares."""
        return {self.x_of(h): r[:SHARE_BYTES] for h, r in holders.items()}

    def committed(self) -> tuple[dict[int, bytes], set[int]]:
        """The released shares that open their commitments, and the holders of the others."""
        good, bad = {}, set()
        for holder, released in self.released.items():
            share = opened_share(
                self.scope, self.owner, holder, self.kind, released, self.commitment_of(holder)
            )
            if share is None:
                bad.add(holder)
            else:
                good[holder] = released
        return good, bad


def rebuild_secret(
    secret: SharedSecret, threshold: int, culprits: dict[int, str], where: str
) -> SecretBytes:
    """Rebuild a secret from any ``threshold`` shares; on a failed check, from committed ones.

    On a mismatch the released shares are checked against their commitments, every holder
    whose share does not open its commitment is named, and the good shares are used. The
    optimistic path costs one combination and one check per secret: shares are checked one by
    one only when it fails.

    Raises:
        ReconstructionError: fewer than ``threshold`` good shares, or a secret its owner did not
            commit to (the owner dealt inconsistent shares).
    """
    shamir = Shamir(threshold)
    try:
        first = shamir.combine(secret.points(secret.released))
        if secret.check(first):
            return first
    except ShamirError:
        pass
    good, bad = secret.committed()
    for holder in bad:
        culprits.setdefault(holder, f"{where}: a share of client {secret.owner} is wrong")
    try:
        rebuilt = shamir.combine(secret.points(good))
    except ShamirError as exc:
        raise ReconstructionError(secret.owner, f"{len(good)} good shares: {exc}") from None
    if not secret.check(rebuilt):
        raise ReconstructionError(
            secret.owner,
            f"dealt shares that do not match its {secret.kind} commitment",
            proven=True,
        )
    return rebuilt
