"""Drives enclave-aggregation rounds (``protocol = "enclave"``) over HTTP-delivered uploads.

The server runs the aggregator trusted application (:class:`~qflare.tee.aggregator_host.
AggregatorHost`) in a *simulated* enclave process whose sealed key lives under
``state_dir/enclave/<measurement prefix>`` (the simulated maker that certifies it under
``state_dir/enclave/maker``). One round:

1. open: sample live devices, write the round row, then BEGIN the round in the enclave with the
   sampled devices' certificates, ``enclave_min_accepted`` and ``enclave_defence``; each device's
   task (:class:`~qflare.protocol.wire.EnclaveTask`) carries the model, the enclave key and
   evidence binding it to the round's nonce (:func:`~qflare.protocol.enclave.round_nonce`);
2. results: each signed upload is written to the round's event log, then SUBMITted; one the
   enclave excludes (bad signature, NaN, wrong round...) makes that device a culprit of the round,
   with the enclave's reason, and the node gets 400; a ``declined`` notice stops the wait for it;
3. close: when every sampled device answered, or at the deadline, FINISH releases the robust
   aggregate (a float delta) and counts only; it is applied through the base's model update
   path. Nothing names the devices the defence rejected (the enclave does not say).

The enclave's round lives in its process only, and a round id is never begun twice (its counter
refuses), so a restarted server cannot resume a round: it aborts every open round with a reason
(the logged uploads stay, for the operator's audit). A round that aborts (too few valid uploads)
leaves the enclave's round open, so the enclave process is restarted from its sealed key.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from qflare.crypto import Rng
from qflare.fl.strategy import AggregateResult
from qflare.ledger import Ledger
from qflare.protocol.enclave import round_nonce
from qflare.protocol.errors import AbortReason, RemoteProtocolError
from qflare.protocol.identity import encode_authority_key
from qflare.protocol.wire import EnclaveTask, SignedResult, Task
from qflare.server import events
from qflare.server.authority_client import load_authority_key
from qflare.server.chronos_live import abort_row
from qflare.server.coordinator_base import ABORTED, CoordinatorBase, RoundEnd
from qflare.server.model import ModelStore
from qflare.server.settings import ServerSettings
from qflare.store import repos
from qflare.store.models import Round
from qflare.tee import SimulatedRootCa
from qflare.tee.aggregator_host import AggregatorHost, RoundAggregate
from qflare.tee.aggregator_ta import AggregatorConfig, aggregator_measurement
from qflare.tee.errors import EnclaveError
from qflare.tee.maker import MAKER_CERT, MAKER_KEY, init_maker, load_maker

__all__ = [
    "RESTART_ABORT",
    "SESSION",
    "UPLOAD_STATE",
    "EnclaveCoordinator",
    "aggregator_config",
    "EnclaveRound",
    "enclave_dir",
]

SESSION = "qflare"
UPLOAD_STATE = "UPLOAD"
RESTART_ABORT = "server restarted: the enclave's round state is gone (round ids are never reused)"


def aggregator_config(settings: ServerSettings) -> AggregatorConfig:
    """The aggregator enclave's configuration for ``settings`` (what its measurement covers).

    Raises:
        ValueError: no ``authority_key`` (the enclave admits devices by their certificates).
    """
    if settings.authority_key is None:
        raise ValueError("protocol 'enclave' needs authority_key (the enclave checks certs)")
    authority = load_authority_key(settings.authority_key)
    return AggregatorConfig(
        authority=encode_authority_key(authority), min_accepted=settings.enclave_min_accepted
    )


def enclave_dir(settings: ServerSettings) -> Path:
    """Where the aggregation enclave keeps its state (and the simulated maker its key)."""
    return Path(settings.state_dir) / "enclave"


@dataclass
class EnclaveRound:
    """The open enclave round: who was sampled, who answered, the one task they all get."""

    round_id: int
    devices: dict[int, str]
    task: Task
    deadline: float
    index_of: dict[str, int] = field(default_factory=dict)
    answered: set[int] = field(default_factory=set)
    excluded: dict[int, str] = field(default_factory=dict)
    culprits: dict[int, str] = field(default_factory=dict)
    released: RoundEnd | None = None  # FINISH ran; its close is still to be written
    seq: int = 0

    def __post_init__(self) -> None:
        self.index_of = {device: index for index, device in self.devices.items()}

    def pending(self) -> set[int]:
        """Sampled devices that neither uploaded nor were excluded."""
        return set(self.devices) - self.answered - set(self.excluded)

    def task_for(self, index: int) -> Task | None:
        """The round's task, until this device answered."""
        return self.task if index in self.pending() and self.released is None else None

    def next_seq(self) -> int:
        """The next event-log sequence number of this round."""
        self.seq += 1
        return self.seq


class EnclaveCoordinator(CoordinatorBase[EnclaveRound]):
    """The round driver of the enclave mode (thread-safe; called from handlers and the ticker).

    Args:
        settings: Server settings (``protocol`` is ``enclave``).
        factory: Database session factory.
        ledger: Audit ledger.
        models: Global model store.
        clock: Current time.
        rng: Randomness (the simulated maker's key on first start).

    Raises:
        ValueError: no ``authority_key`` (the enclave admits devices by its certificates), or
            the simulated enclave is not allowed (``enclave_allow_simulated``).
    """

    def __init__(
        self,
        settings: ServerSettings,
        factory: sessionmaker[Session],
        ledger: Ledger,
        models: ModelStore,
        clock: Callable[[], float],
        rng: Rng,
    ) -> None:
        super().__init__(settings, factory, ledger, models, clock, rng)
        if not settings.enclave_allow_simulated:
            raise ValueError(
                "protocol 'enclave' runs on the simulated TEE backend only: set "
                "enclave_allow_simulated = true (and nodes --allow-simulated-attestation)"
            )
        self.config = aggregator_config(settings)
        self._host: AggregatorHost | None = None

    @property
    def measurement(self) -> bytes:
        """The aggregator enclave's measurement: what nodes pin (``--enclave-measurement``)."""
        return aggregator_measurement(self.config)

    # ---- the enclave ----------------------------------------------------------------------------

    def _maker(self) -> SimulatedRootCa:
        directory = enclave_dir(self.settings) / "maker"
        if (directory / MAKER_KEY).exists():
            return load_maker(directory)
        return init_maker(directory, self._rng)

    @property
    def root_certificate(self) -> Path:
        """The simulated manufacturer's root certificate (nodes trust it: ``--enclave-root``)."""
        return enclave_dir(self.settings) / "maker" / MAKER_CERT

    def _enclave(self) -> AggregatorHost:
        if self._host is None:
            # one state per measurement: a changed configuration (authority, min_accepted) is
            # another enclave, whose key and counters start afresh (the old blob would not open)
            state = enclave_dir(self.settings) / self.measurement.hex()[:16]
            self._host = AggregatorHost.start(state, self.config, provisioner=self._maker())
        return self._host

    def _restart_enclave(self) -> None:
        """Drop the enclave's open round: a new process opens the sealed key afresh."""
        self.close()
        self._enclave()

    def close(self) -> None:
        """Shut the enclave process down (its sealed key and counters stay on disk)."""
        host, self._host = self._host, None
        if host is not None:
            host.close()

    # ---- results --------------------------------------------------------------------------------

    def _verified(
        self, device_id: str, result: SignedResult, identity_pk: bytes
    ) -> tuple[EnclaveRound, int]:
        live = self._live
        if live is None or result.round_id != live.round_id or device_id not in live.index_of:
            raise RemoteProtocolError(
                "no such round for this device", state="NONE", http_status=409
            )
        if result.step != 0 or result.device_id != device_id or live.released is not None:
            raise RemoteProtocolError(
                f"step {result.step} is not open", state=UPLOAD_STATE, http_status=409
            )
        index = live.index_of[device_id]
        self.verify_result(device_id, result, identity_pk, UPLOAD_STATE, index)
        return live, index

    def _accept_result(
        self, live: EnclaveRound, index: int, device_id: str, identity_pk: bytes, message: bytes
    ) -> None:
        if index in live.answered:
            return  # re-sent after its answer was lost: already in the enclave
        if index in live.excluded:
            raise RemoteProtocolError(
                f"device is out of this round: {live.excluded[index]}",
                state=UPLOAD_STATE,
                client=index,
                http_status=409,
            )
        self._commit("upload", lambda db: self._log(db, live, "upload", index, message))
        verdict = self._enclave().submit(message)
        if not verdict.accepted:
            why = f"upload excluded by the enclave: {verdict.reason}"
            live.excluded[index] = live.culprits[index] = why
            self._commit("reject", lambda db: self._log(db, live, "reject", index, why.encode()))
            events.device_excluded(live.round_id, index, device_id, why)
            self._maybe_finish(live)
            raise RemoteProtocolError(
                why, state=UPLOAD_STATE, client=index, reason=AbortReason.BAD_CIPHERTEXT
            )
        live.answered.add(index)
        self._maybe_finish(live)

    def _stop_waiting(self, live: EnclaveRound, index: int, why: str) -> None:
        """A node declined this round or left: stop waiting for it."""
        if index in live.pending():
            live.excluded[index] = why
            self._commit("reject", lambda db: self._log(db, live, "reject", index, why.encode()))
            events.device_excluded(live.round_id, index, live.devices[index], why)
        self._maybe_finish(live)

    def _maybe_finish(self, live: EnclaveRound) -> None:
        if not live.pending():  # the upload is durable: a failed close is the tick's
            self._guarded("finish", lambda: self._finish(live, self._clock()), raise_=False)

    def _log(
        self, db: Session, live: EnclaveRound, kind: str, sender: int | None, payload: bytes | None
    ) -> None:
        repos.append_event(db, live.round_id, live.next_seq(), kind, sender, payload)

    # ---- the clock ------------------------------------------------------------------------------

    def _on_tick(self, now: float) -> None:
        live = self._live
        if live is not None:
            if live.released is not None or not live.pending() or now >= live.deadline:
                self._finish(live, now)
            return
        if now - self._last_close >= self.settings.round_interval_s:
            self._maybe_open(now)

    def _lost(self, now: float) -> None:
        """A write failed: memory holds nothing the log lacks (uploads are logged first)."""

    # ---- opening and closing --------------------------------------------------------------------

    def _maybe_open(self, now: float) -> None:
        left = self._rounds_left()
        cohort = self._cohort(now) if left is None or left > 0 else None
        if cohort is None:
            return
        devices, round_id = cohort
        if len(devices) < self.settings.enclave_min_accepted:
            return
        version, weights = self._models.latest()
        host = self._enclave()
        deadline = now + self.settings.training_timeout_s
        ids = {d.client_index: d.id for d in devices}
        config = {
            "defence": self.settings.enclave_defence,
            "min_accepted": self.settings.enclave_min_accepted,
            "dim": int(weights.size),
        }
        row = Round(
            id=round_id,
            state=UPLOAD_STATE,
            config=json.dumps(config).encode(),
            devices=json.dumps(ids),
            model_version=version,
            opened_at=now,
            deadline_at=deadline,
        )
        self._commit("round open", lambda db: db.add(row))
        try:
            host.begin_round(
                session=SESSION,
                round_id=round_id,
                dim=int(weights.size),
                certificates=tuple(d.certificate or b"" for d in devices),
                min_accepted=self.settings.enclave_min_accepted,
                defence=self.settings.enclave_defence,
                params=self.settings.enclave_defence_params,
            )
            nonce = round_nonce(SESSION, round_id)
            evidence = host.evidence(nonce)
        except EnclaveError as exc:
            self._abort_open([(round_id, f"the enclave refused the round: {exc}")], now)
            self._restart_enclave()
            return
        body = EnclaveTask(
            session=SESSION,
            model_version=version,
            weights=np.asarray(weights, dtype="<f4").tobytes(),
            dim=int(weights.size),
            clip=self.settings.clip,
            enclave_key=host.public_key,
            evidence=evidence,
            nonce=nonce,
            deadline=deadline,
        )
        task = Task(
            round_id=round_id, step=0, body=body, step_timeout_s=self.settings.step_timeout_s
        )
        self._live = EnclaveRound(round_id, ids, task, deadline)
        self.generation += 1
        n = len(devices)
        events.round_opened(
            round_id, n, n, self.settings.enclave_min_accepted, version, deadline - now
        )
        self._audit(
            "round_open",
            {
                "round": round_id,
                "clients": n,
                "min_accepted": self.settings.enclave_min_accepted,
                "defence": self.settings.enclave_defence,
                "model_version": version,
            },
            now,
        )

    def _finish(self, live: EnclaveRound, now: float) -> None:
        """FINISH the round in the enclave (once), then close it; a failed close is retried."""
        if live.released is None:
            late = live.pending()
            for index in sorted(late):
                live.excluded[index] = "missed the deadline"
                events.device_excluded(live.round_id, index, live.devices[index], "deadline")
            self.forget(live.devices[i] for i in late)
            live.released = self._release(live)
            self.generation += 1
        end = live.released
        counts = msgspec.json.encode(end.audit)
        self._end_round(end, now, also=lambda db: self._log(db, live, "finish", None, counts))
        self._live = None

    def _release(self, live: EnclaveRound) -> RoundEnd:
        survivors = tuple(sorted(live.answered))
        try:
            out: RoundAggregate = self._enclave().finish(live.round_id)
        except EnclaveError as exc:  # too few valid uploads, or the enclave process failed
            self._restart_enclave()  # the enclave keeps a round it did not release open
            return RoundEnd(
                round_id=live.round_id,
                total=None,
                survivors=survivors,
                culprits=dict(live.culprits),
                abort=f"enclave: {exc}"[:200],
                audit={"uploads": len(live.answered), "excluded": len(live.excluded)},
            )
        aggregate = AggregateResult(out.delta * out.weight, out.weight, out.accepted)
        return RoundEnd(
            round_id=live.round_id,
            total=None,
            survivors=survivors,
            culprits=dict(live.culprits),
            abort=None,
            audit={
                "defence": out.defence,
                "submitted": out.submitted,
                "excluded": out.excluded,
                "rejected": out.rejected,
                "accepted": out.accepted,
            },
            aggregate=aggregate,
        )

    # ---- recovery -------------------------------------------------------------------------------

    def recover(self) -> None:
        """After a restart: start the enclave, abort every round a previous process left open."""
        self._enclave()
        with self._factory() as db:
            rows = list(repos.open_rounds(db))
        self._abort_open([(r.id, RESTART_ABORT) for r in rows], self._clock())

    def _abort_open(self, rounds: list[tuple[int, str]], now: float) -> None:
        """Close open rounds as aborted, each with its reason."""
        if not rounds:
            return

        def write(db: Session) -> list[tuple[int, str]]:
            return [(i, why) for i, why in rounds if abort_row(db, i, now, why[:200])]

        for round_id, why in self._commit("abort open rounds", write):
            events.round_closed(round_id, ABORTED, survivors=(), model_version=None, abort=why)
            self._audit("round_abort", {"round": round_id, "abort": why[:200]}, now)
        self._last_close = now
