"""The neighbour graph's seed, drawn by commit-then-reveal so the server cannot grind it.

A sparse graph (``k < n``) is safe only if it is random with respect to the clients the server
controls. The server picks the cohort, so it must not also pick the graph: each participant
commits to 32 random bytes when it advertises its keys, the server shows every participant the
full list of commitments, each reveals its bytes (and commits to fresh ones for a possible
restart), and the seed is a hash over all reveals. Every honest client checks that its own
commitment and reveal are in the lists and that every reveal opens its commitment, so its graph
contains randomness it drew after the server fixed everything else.

Residual choice of the server (documented in the threat model): when some participant does not
reveal, the exchange restarts among those who did, with the commitments they sent beside their
reveals; a client accepts at most ``ClientPolicy.max_seed_restarts`` restarts per round, so the
server draws at most ``1 + max_seed_restarts`` graphs per round. It can also abort a round and
open another (each abort costs a whole round and is in the audit ledger). Equivocation (showing
different lists to different clients) gives them different seeds; clients sign the seed with the
survivor set, so shares are released only among clients that saw the same graph.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

import msgspec

from qflare.crypto import Rng
from qflare.protocol.errors import AbortReason, RemoteProtocolError

__all__ = [
    "REVEAL_BYTES",
    "SeedCollector",
    "SeedParticipant",
    "SeedState",
    "commitment",
    "derive_seed",
]

REVEAL_BYTES: Final = 32
GRAPH_SEED_BYTES: Final = 16
_COMMIT_DOMAIN: Final = b"qflare/graph-seed/v1/commit"
_SEED_DOMAIN: Final = b"qflare/graph-seed/v1/seed"


def _encode(*parts: bytes | str | int) -> bytes:
    out = bytearray()
    for part in parts:
        raw = part.encode() if isinstance(part, str) else part
        raw = raw.to_bytes(8, "big", signed=True) if isinstance(raw, int) else raw
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


@lru_cache(maxsize=64)
def _commit_prefix(scope: str) -> Any:
    return hashlib.sha256(_COMMIT_DOMAIN + _encode(scope))


def commitment(scope: str, client: int, attempt: int, reveal: bytes) -> bytes:
    """SHA-256 commitment of ``client`` to ``reveal`` for ``attempt`` of the exchange ``scope``.

    Every client hashes every participant's reveal, so this is kept to one ``copy`` of a cached
    hash state and one ``update`` of fixed-width fields.
    """
    h = _commit_prefix(scope).copy()
    h.update(
        client.to_bytes(8, "big", signed=True)
        + attempt.to_bytes(8, "big", signed=True)
        + len(reveal).to_bytes(4, "big")
        + reveal
    )
    digest: bytes = h.digest()
    return digest


def derive_seed(scope: str, attempt: int, reveals: Mapping[int, bytes]) -> bytes:
    """The graph seed: a hash over every participant's reveal, in client order."""
    h = hashlib.sha256(_SEED_DOMAIN + _encode(scope, attempt, len(reveals)))
    h.update(
        b"".join(
            c.to_bytes(8, "big", signed=True) + len(v).to_bytes(4, "big") + v
            for c, v in sorted(reveals.items())
        )
    )
    return h.digest()[:GRAPH_SEED_BYTES]


def _digest(commitments: Mapping[int, bytes]) -> bytes:
    h = hashlib.sha256(_COMMIT_DOMAIN + b"/list")
    h.update(
        b"".join(
            c.to_bytes(8, "big", signed=True) + len(v).to_bytes(4, "big") + v
            for c, v in sorted(commitments.items())
        )
    )
    return h.digest()


def _refuse(why: str, state: str, client: int | None, reason: AbortReason) -> RemoteProtocolError:
    return RemoteProtocolError(why, state=state, client=client, reason=reason)


class SeedState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A participant's exchange state, for sealing between enclave commands (secret)."""

    scope: str
    client: int
    max_restarts: int
    attempt: int
    reveal: bytes
    next: bytes = b""
    shown: bytes = b""


class SeedParticipant:
    """A client's side of the exchange (its reveals are drawn from the injected ``rng``).

    Args:
        scope: Names the exchange (session, protocol, round or epoch); bound into every hash.
        client: This client's id.
        rng: Randomness for the reveals.
        max_restarts: Restarts this client accepts.
    """

    def __init__(self, scope: str, client: int, rng: Rng, max_restarts: int) -> None:
        self._scope, self._id, self._rng, self._max = scope, client, rng, max_restarts
        self._attempt = 0
        self._reveal = rng.random_bytes(REVEAL_BYTES)
        self._next = b""
        self._shown = b""  # digest of the commitment list shown (O(1) memory per client)

    def export(self) -> SeedState:
        """The exchange state (contains the unrevealed bytes: seal it, never send it)."""
        return SeedState(
            scope=self._scope,
            client=self._id,
            max_restarts=self._max,
            attempt=self._attempt,
            reveal=self._reveal,
            next=self._next,
            shown=self._shown,
        )

    @classmethod
    def restore(cls, state: SeedState, rng: Rng) -> SeedParticipant:
        """Resume from :meth:`export` output."""
        p = cls(state.scope, state.client, rng, state.max_restarts)
        p._attempt, p._reveal, p._next = state.attempt, state.reveal, state.next
        p._shown = state.shown
        return p

    @property
    def first_commitment(self) -> bytes:
        """The commitment sent with the key advertisement (attempt 0)."""
        return commitment(self._scope, self._id, 0, self._reveal)

    def on_commitments(
        self,
        attempt: int,
        commitments: Mapping[int, bytes],
        participants: frozenset[int],
        threshold: int,
        *,
        state: str,
    ) -> tuple[bytes, bytes]:
        """Check the server's list for ``attempt``; return (our reveal, next commitment).

        Raises:
            RemoteProtocolError: an unexpected attempt, our commitment missing or changed,
                strangers, or fewer than ``threshold`` members.
        """
        expected = 0 if not self._shown else self._attempt + 1
        if attempt != expected or attempt > self._max:
            raise _refuse(
                f"seed exchange attempt {attempt} (expected {expected}, at most {self._max})",
                state,
                self._id,
                AbortReason.SEED_WITHHELD,
            )
        if attempt > 0:
            self._reveal = self._next
        mine = commitment(self._scope, self._id, attempt, self._reveal)
        if not hmac.compare_digest(commitments.get(self._id, b""), mine):
            raise _refuse(
                "seed commitments omit or change ours",
                state,
                self._id,
                AbortReason.INCONSISTENT_VIEW,
            )
        if not commitments.keys() <= participants or len(commitments) < threshold:
            raise _refuse(
                f"{len(commitments)} seed commitments (threshold {threshold}) or strangers",
                state,
                self._id,
                AbortReason.TOO_FEW_CLIENTS,
            )
        self._attempt, self._shown = attempt, _digest(commitments)
        self._next = self._rng.random_bytes(REVEAL_BYTES)
        return self._reveal, commitment(self._scope, self._id, attempt + 1, self._next)

    def on_reveals(self, reveals: Mapping[int, bytes], *, state: str) -> bytes:
        """Check that every member's reveal opens its commitment; return the graph seed.

        Raises:
            RemoteProtocolError: no list was shown yet, a member missing, or a bad reveal.
        """
        opened = {
            client: commitment(self._scope, client, self._attempt, reveal)
            for client, reveal in reveals.items()
            if len(reveal) == REVEAL_BYTES
        }
        if not self._shown or len(opened) != len(reveals):
            raise _refuse(
                "seed reveals are malformed or came before the commitments",
                state,
                self._id,
                AbortReason.INCONSISTENT_VIEW,
            )
        if not hmac.compare_digest(_digest(opened), self._shown):
            raise _refuse(
                "seed reveals do not open the commitments shown",
                state,
                self._id,
                AbortReason.INCONSISTENT_VIEW,
            )
        return derive_seed(self._scope, self._attempt, reveals)


@dataclass
class SeedCollector:
    """The server's side: commitments in, reveals in, the seed (or a restart) out.

    Attributes:
        scope: Names the exchange (must match the clients').
        max_restarts: Restarts the server attempts before giving up.
        attempt: The current attempt.
        commitments: The current attempt's commitments, by client.
    """

    scope: str
    max_restarts: int
    attempt: int = 0
    commitments: dict[int, bytes] = field(default_factory=dict)
    _reveals: dict[int, bytes] = field(default_factory=dict)
    _next: dict[int, bytes] = field(default_factory=dict)

    def commit(self, client: int, value: bytes) -> None:
        """Record ``client``'s attempt-0 commitment (from its key advertisement).

        Raises:
            ValueError: not a 32-byte commitment.
        """
        if len(value) != hashlib.sha256().digest_size:
            raise ValueError("seed commitment must be 32 bytes")
        self.commitments[client] = value

    def offer(self, client: int, value: bytes, *, sparse: bool) -> str | None:
        """Take an advertisement's seed commitment; why it is refused (``None``: accepted).

        A sparse graph needs a 32-byte commitment; the complete graph needs none.
        """
        if not sparse:
            return "seed commitment in a complete graph" if value else None
        try:
            self.commit(client, value)
        except ValueError:
            return "bad seed commitment"
        return None

    def restrict(self, clients: frozenset[int]) -> None:
        """Keep only ``clients``' commitments (e.g. those whose advertisement was accepted)."""
        self.commitments = {c: v for c, v in self.commitments.items() if c in clients}

    def reveal(self, client: int, attempt: int, reveal: bytes, next_commitment: bytes) -> None:
        """Check and record one reveal.

        Raises:
            ValueError: wrong attempt, not a member, or the reveal does not open the commitment.
        """
        wanted = self.commitments.get(client)
        if attempt != self.attempt or wanted is None or len(next_commitment) != 32:
            raise ValueError("reveal for another attempt, from a non-member, or malformed")
        if not hmac.compare_digest(commitment(self.scope, client, attempt, reveal), wanted):
            raise ValueError("reveal does not open the commitment")
        self._reveals[client], self._next[client] = reveal, next_commitment

    def close(self) -> bytes | None:
        """The seed if every member revealed; else start the next attempt and return ``None``.

        Raises:
            ValueError: members are missing and no restart is left.
        """
        if set(self._reveals) == set(self.commitments):
            return derive_seed(self.scope, self.attempt, self._reveals)
        if self.attempt >= self.max_restarts:
            raise ValueError(f"{len(self.commitments) - len(self._reveals)} seed reveals missing")
        self.attempt += 1
        self.commitments, self._reveals, self._next = dict(self._next), {}, {}
        return None

    @property
    def reveals(self) -> dict[int, bytes]:
        """The current attempt's reveals, by client (sent to everyone once complete)."""
        return dict(self._reveals)
