"""Host half of the aggregator trusted application: :class:`AggregatorHost`.

It starts a :class:`~qflare.tee.sim.SimEnclave` running :data:`~qflare.tee.aggregator_ta.
AGGREGATOR_TA`, makes the KEM key (INIT) or restores it from the sealed blob it keeps on disk
(OPEN), answers attestation challenges for that key, and drives rounds: begin, submit, finish.
A TA refusal becomes an :class:`AggregatorRefused` carrying its
:class:`~qflare.tee.aggregator_ta.RoundRefusal`. Everything this class sees is what the
operator sees: uploads as ciphertexts, per-upload verdicts, and one :class:`RoundAggregate`
per round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

from qflare.tee import aggregator_ta as ta
from qflare.tee.attestation import report_data_for
from qflare.tee.certs import SimulatedRootCa
from qflare.tee.errors import CounterReuse, EnclaveError, TrustedAppError
from qflare.tee.sim import ChannelTap, SimEnclave
from qflare.tee.storage import write_private_file
from qflare.tee.ta import Command, call

P = TypeVar("P", bound=msgspec.Struct)
R = TypeVar("R", bound=msgspec.Struct)

SEALED_KEY_FILE = "aggregator-key.sealed"


class AggregatorRefused(EnclaveError):  # noqa: N818 - reads as the event it reports
    """The aggregator TA refused a command.

    Args:
        reason: Why (machine-readable).
        message: Detail from the enclave.
    """

    def __init__(self, reason: ta.RoundRefusal, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RoundAggregate:
    """What the operator gets for a round: the delta and the counts, nothing per device."""

    round_id: int
    defence: str
    delta: npt.NDArray[np.float64]
    weight: float
    submitted: int
    excluded: int
    rejected: int
    accepted: int


def _reraise(exc: TrustedAppError) -> None:
    """Turn a TA refusal back into :class:`AggregatorRefused` (other errors pass through)."""
    text = str(exc)
    if text.startswith(ta.REFUSAL_PREFIX):
        reason, _, message = text[len(ta.REFUSAL_PREFIX) :].partition(":")
        raise AggregatorRefused(ta.RoundRefusal(reason), message) from None


class AggregatorHost:
    """The server's handle on its aggregation enclave.

    Args:
        enclave: A running enclave with the aggregator TA loaded.
        sealed_path: Where the sealed key blob lives (read if present, written on INIT).
    """

    def __init__(self, enclave: SimEnclave, sealed_path: Path) -> None:
        self._enclave, self._path = enclave, sealed_path
        if sealed_path.exists():
            key = self._call(ta.OPEN, ta.OpenParams(sealed=sealed_path.read_bytes()))
        else:
            key = self.rotate_key()
        self._key = key

    @classmethod
    def start(
        cls,
        state_dir: Path | str,
        config: ta.AggregatorConfig,
        *,
        sealed_path: Path | None = None,
        provisioner: SimulatedRootCa | None = None,
        tap: ChannelTap | None = None,
    ) -> AggregatorHost:
        """Start the enclave on ``state_dir``; OPEN the sealed key if it exists, else INIT.

        Raises:
            AggregatorRefused, EnclaveError: the enclave could not boot or refused the blob
                (``RollbackDetected`` for an older one).
        """
        root = Path(state_dir)
        enclave = SimEnclave.start(
            root,
            ta.AGGREGATOR_TA,
            config=ta.encode_config(config),
            provisioner=provisioner,
            tap=tap,
        )
        try:
            return cls(enclave, sealed_path or root / "host" / SEALED_KEY_FILE)
        except BaseException:
            enclave.close()
            raise

    def _call(self, command: Command[P, R], params: P) -> R:
        try:
            return call(self._enclave, command, params)
        except CounterReuse as exc:
            raise AggregatorRefused(ta.RoundRefusal.ROUND_NOT_NEW, str(exc)) from None
        except TrustedAppError as exc:
            _reraise(exc)
            raise

    # ---- key and attestation ----------------------------------------------------------------

    def rotate_key(self) -> ta.KeyResult:
        """INIT: a fresh key pair inside; the new sealed blob replaces the file."""
        key = self._call(ta.INIT, ta.InitParams())
        self._path.parent.mkdir(parents=True, exist_ok=True)
        write_private_file(self._path, key.sealed)
        self._key = key
        return key

    @property
    def public_key(self) -> bytes:
        """The enclave's hybrid KEM public key (nodes encrypt to it after attesting it)."""
        return self._key.public_key

    @property
    def last_round(self) -> int:
        """The highest round id begun on this platform (when the key was last loaded)."""
        return self._key.last_round

    @property
    def enclave(self) -> SimEnclave:
        """The running enclave."""
        return self._enclave

    def evidence(self, nonce: bytes) -> bytes:
        """Evidence binding the KEM public key and a node's 32-byte ``nonce``."""
        return self._enclave.evidence(report_data_for(self._key.public_key, nonce))

    # ---- rounds -----------------------------------------------------------------------------

    def begin_round(
        self,
        *,
        session: str,
        round_id: int,
        dim: int,
        certificates: tuple[bytes, ...],
        min_accepted: int,
        defence: str = "fedavg",
        params: dict[str, float] | None = None,
        max_weight: float = 1e9,
        reference: npt.NDArray[np.floating] | None = None,
    ) -> ta.RoundOpened:
        """Open a round for the certified devices (checked inside the enclave).

        The enclave moves its round counter, then seals its key again; the new blob replaces
        the file (keep only the newest: a restored counter file is then detected).
        """
        ref = b"" if reference is None else np.asarray(reference, dtype="<f4").tobytes()
        request = ta.BeginRound(
            session=session,
            round_id=round_id,
            dim=dim,
            defence=defence,
            params=dict(params or {}),
            certificates=certificates,
            min_accepted=min_accepted,
            max_weight=max_weight,
            reference=ref,
        )
        opened = self._call(ta.BEGIN_ROUND, request)
        write_private_file(self._path, opened.sealed)  # the newest blob: older ones are dead
        return opened

    def submit(self, upload: bytes) -> ta.SubmitResult:
        """Hand one encoded upload to the enclave; returns accepted or the exclusion reason."""
        return self._call(ta.SUBMIT, ta.Submit(upload=upload))

    def finish(self, round_id: int) -> RoundAggregate:
        """The round's one aggregate (refused for a second call or too few valid updates)."""
        out = self._call(ta.FINISH, ta.Finish(round_id=round_id))
        return RoundAggregate(
            round_id=out.round_id,
            defence=out.defence,
            delta=np.frombuffer(out.delta, dtype="<f8"),
            weight=out.weight,
            submitted=out.submitted,
            excluded=out.excluded,
            rejected=out.rejected,
            accepted=out.accepted,
        )

    def close(self) -> None:
        """Shut the enclave down (the sealed key and the counters survive)."""
        self._enclave.close()

    def __enter__(self) -> AggregatorHost:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
