"""The witness's one job: apply the pure decision, persist the new state, then cosign."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from qflare.crypto import MlDsa65Signer
from qflare.ledger import (
    Cosignature,
    CosignRequest,
    RefusalCode,
    WitnessRefused,
    WitnessState,
    witness_cosign,
)
from qflare.ledger.wire import WitnessStatus
from qflare.witness.store import WitnessDir

log = logging.getLogger("qflare.witness")
_FORK_CODES = frozenset({RefusalCode.INCONSISTENT, RefusalCode.SMALLER_THAN_COSIGNED})


class WitnessService:
    """One witness: its key, the pinned ledger key and its state, behind a lock.

    Args:
        directory: Where the state is persisted.
        signer: The witness key.
        server_key: The pinned ledger key.
        state: The loaded state (pinning ``server_key``).
        clock: Wall-clock time.
    """

    def __init__(
        self,
        directory: WitnessDir,
        signer: MlDsa65Signer,
        server_key: bytes,
        state: WitnessState,
        clock: Callable[[], float],
    ) -> None:
        self._dir, self._signer, self._server_key = directory, signer, server_key
        self._state, self._clock = state, clock
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls, directory: WitnessDir, server_key: bytes, clock: Callable[[], float]
    ) -> WitnessService:
        """Load the key and the state of ``directory`` for the ledger ``server_key``.

        Raises:
            WitnessDirError: missing or unsafe key, malformed state, or another ledger.
        """
        return cls(
            directory, directory.signer(), server_key, directory.load_state(server_key), clock
        )

    @property
    def state(self) -> WitnessState:
        """The current state."""
        return self._state

    def status(self) -> WitnessStatus:
        """Public key and last cosigned head (what ``GET /v1/witness`` serves)."""
        s = self._state
        return WitnessStatus(
            public_key=self._signer.public_key,
            origin=s.origin,
            tree_size=s.tree_size,
            root_hash=s.root_hash,
            sth=s.sth,
            cosigned_at=s.cosigned_at,
        )

    def cosign(self, request: CosignRequest) -> Cosignature:
        """Cosign ``request.sth`` if it extends the last cosigned head; persist first.

        Raises:
            WitnessRefused: the head is refused (logged with its reason).
        """
        with self._lock:
            try:
                cosig, new = witness_cosign(
                    self._state, self._signer, self._server_key, request, self._clock()
                )
            except WitnessRefused as exc:
                self._log_refusal(request, exc)
                raise
            self._dir.save_state(new)  # durable before the cosignature leaves
            self._state = new
        log.info(
            "head cosigned",
            extra={"tree_size": new.tree_size, "root": new.root_hash.hex()[:16]},
        )
        return cosig

    def _log_refusal(self, request: CosignRequest, exc: WitnessRefused) -> None:
        extra = {
            "code": exc.code.value,
            "why": exc.reason,
            "tree_size": request.sth.tree_size,
            "cosigned_size": self._state.tree_size,
        }
        if exc.code in _FORK_CODES:
            log.error("ledger fork detected: refusing to cosign", extra=extra)
        else:
            log.warning("refusing to cosign", extra=extra)
