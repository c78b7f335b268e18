"""The node's watch on the server's audit ledger: refuse to work for a server that rewrote history.

With witness keys configured (``qflare node run --witness-key F …``) the node keeps the last
cosigned head it accepted in its state directory (``ledger-head.cosigned``) and, at start and at
every round start, fetches the server's head and a consistency proof from the held one:

* consistent and cosigned by a quorum of its witnesses: the new head is held (and saved);
* consistent without a quorum, older, or the server unreachable: a warning, the old head stays;
* provably inconsistent (a fork): ``"ledger fork detected"`` is logged and
  :class:`~qflare.node.session.NodeFatalError` stops the node.

Two small requests per round; the Merkle proof has O(log n) hashes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import msgspec

from qflare.ledger import (
    CosignedHead,
    HeadTracker,
    LedgerError,
    LedgerForked,
    decode_public_key,
)
from qflare.ledger.merkle import ConsistencyProof
from qflare.ledger.wire import HeadReply
from qflare.node.session import NodeFatalError
from qflare.node.state import StateError
from qflare.node.transport import TransportError
from qflare.store.files import write_atomic

__all__ = ["HEAD_FILE", "LedgerSource", "LedgerWatch", "WitnessConfig"]

log = logging.getLogger("qflare.node.ledger")
HEAD_FILE: Final = "ledger-head.cosigned"


class LedgerSource(Protocol):
    """The two ledger endpoints the watch needs (:class:`~qflare.node.transport.HttpApi`)."""

    def ledger_head(self) -> HeadReply:
        """The server's latest cosigned head."""
        ...

    def ledger_consistency(self, first: int, second: int) -> ConsistencyProof:
        """Proof that the tree of ``second`` entries extends the tree of ``first``."""
        ...


@dataclass(frozen=True)
class WitnessConfig:
    """The witnesses a relying party trusts.

    Attributes:
        keys: Their ML-DSA-65 public keys.
        quorum: How many must cosign a head.
    """

    keys: tuple[bytes, ...]
    quorum: int

    @classmethod
    def from_files(cls, paths: Sequence[Path], quorum: int | None = None) -> WitnessConfig:
        """Read witness key files; the quorum defaults to all of them.

        Raises:
            ValueError: a file is unreadable or malformed, or the quorum is impossible.
        """
        keys = []
        for path in paths:
            try:
                keys.append(decode_public_key(path.read_text(encoding="utf-8")))
            except (OSError, ValueError) as exc:
                raise ValueError(f"witness key file {path}: {exc}") from exc
        if len(set(keys)) != len(keys):
            raise ValueError("the same witness key is given twice")
        q = len(keys) if quorum is None else quorum
        if not 1 <= q <= len(keys):
            raise ValueError(f"the witness quorum must lie in 1..{len(keys)}, not {q}")
        return cls(tuple(keys), q)


class LedgerWatch:
    """Checks the server's head against the held one; see the module docstring.

    Args:
        source: Where heads and proofs come from.
        tracker: The held head and the acceptance rules.
        path: Where the held head is saved.
    """

    def __init__(self, source: LedgerSource, tracker: HeadTracker, path: Path) -> None:
        self._source, self._tracker, self._path = source, tracker, path

    @classmethod
    def open(
        cls, state_root: Path, source: LedgerSource, server_key: bytes, config: WitnessConfig
    ) -> LedgerWatch:
        """The watch of the node in ``state_root``, with the head it saved earlier (if any).

        Raises:
            StateError: the saved head is malformed or not signed by ``server_key``.
        """
        path = state_root / HEAD_FILE
        held = None
        if path.exists():
            try:
                held = msgspec.msgpack.decode(path.read_bytes(), type=CosignedHead)
                tracker = HeadTracker(server_key, config.keys, config.quorum, held)
            except (msgspec.DecodeError, LedgerError) as exc:
                raise StateError(f"{path} is not a head of this server's ledger: {exc}") from exc
        else:
            tracker = HeadTracker(server_key, config.keys, config.quorum)
        return cls(source, tracker, path)

    @property
    def held(self) -> CosignedHead | None:
        """The last accepted head."""
        return self._tracker.held

    def check(self) -> bool:
        """Fetch the server's head and take it if it passes; ``True`` if the held head grew.

        Raises:
            NodeFatalError: the server's history forked from the held head.
        """
        before = self._tracker.held
        try:
            head = self._source.ledger_head().head
            span = self._tracker.proof_range(head)
            proof = self._source.ledger_consistency(*span) if span else None
            grew = self._tracker.accept(head, proof)
        except LedgerForked as exc:
            log.error("ledger fork detected", extra={"why": str(exc)})
            raise NodeFatalError(f"ledger fork detected: {exc}") from exc
        except (LedgerError, TransportError) as exc:
            log.warning(
                "ledger head not accepted; keeping the held one",
                extra={"error": type(exc).__name__, "why": str(exc)[:300]},
            )
            return False
        held = self._tracker.held
        if held is not before and held is not None:
            write_atomic(self._path, msgspec.msgpack.encode(held), 0o644)
            if grew:
                log.info("ledger head accepted", extra={"tree_size": held.sth.tree_size})
        return grew
