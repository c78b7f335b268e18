"""Drives CHRONOS epochs over HTTP-delivered messages (``protocol = "chronos" | "chronos-dm"``).

An epoch is a fixed set of devices (the first ``min_clients..max_clients`` recently seen ones)
and ``chronos_rounds_per_epoch`` rounds. Its steps are ordinary tasks: a *join* step (each node
opens its keystore and answers with the identity key that keystore signs with -- an enclave
makes its own), the three offline steps, then per round ``RoundStart`` (with the global model)
and, when needed, the unmask step. Each round's exact sum is dequantised and applied with
FedAvg, and the round row is closed, as for SecAgg.

Every accepted message and every advance is written to the event log of the current round row
(masked inputs as their sender only). **A restarted server does not resume a CHRONOS epoch**:
the nodes' keystores cannot be rewound to a replayed server, and the log does not keep masked
inputs, so :meth:`ChronosCoordinator.recover` aborts every open round row with a logged reason
and the next epoch starts afresh (round ids keep increasing, so no enclave counter is reused).
For the same reason a database write that fails mid-epoch abandons the epoch: clients get 503,
then 409; its open rows are closed as aborted as soon as the database takes writes again, and
no epoch opens before that.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import msgspec
from sqlalchemy.orm import Session, sessionmaker

from qflare.crypto import Rng
from qflare.ledger import Ledger
from qflare.protocol.chronos import ChronosServer, EpochConfig, Mode, State
from qflare.protocol.chronos import messages as cm
from qflare.protocol.errors import ProtocolError, RemoteProtocolError
from qflare.protocol.wire import (
    ChronosJoin,
    ChronosJoined,
    ChronosRound,
    ChronosSetup,
    ChronosStep,
    ChronosTask,
    SignedResult,
)
from qflare.server import events
from qflare.server.admission import Admission, Refused
from qflare.server.chronos_live import (
    ChronosEpoch,
    abort_row,
    malformed,
    put_round_row,
    result_of,
    step_index,
)
from qflare.server.coordinator_base import ABORTED, CoordinatorBase, RoundEnd
from qflare.server.model import ModelStore
from qflare.server.settings import ServerSettings
from qflare.store import repos
from qflare.store.models import Round

__all__ = ["RESTART_ABORT", "ChronosCoordinator"]

log = logging.getLogger("qflare.server")
RESTART_ABORT = "server restarted: an interrupted CHRONOS epoch is not resumed"
WRITE_ABORT = "a database write failed: the CHRONOS epoch was abandoned"
SESSION = "qflare"


class ChronosCoordinator(CoordinatorBase[ChronosEpoch]):
    """The server's CHRONOS epoch driver; same public surface as :class:`Coordinator`.

    Args:
        settings: Server settings (``protocol`` is ``chronos`` or ``chronos-dm``).
        factory: Database session factory.
        ledger: Audit ledger.
        models: Global model store.
        clock: Current time.
        rng: Randomness for graph seeds.
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
        self.mode = Mode(settings.protocol)
        self.admission = Admission.from_settings(settings)
        self._abandoned = False  # an epoch was dropped; its open rows still need closing

    # ---- results ----------------------------------------------------------------------------------

    def _unavailable(self, now: float) -> bool:
        """The database is down, or an abandoned epoch's rows are not closed yet."""
        return self.health.blocked(now) or self._abandoned

    def _verified(
        self, device_id: str, result: SignedResult, identity_pk: bytes
    ) -> tuple[ChronosEpoch, int]:
        live = self._live
        index = step_index(live, device_id, result)
        assert live is not None
        self.verify_result(device_id, result, identity_pk, live.state_name(), index)
        return live, index

    def _accept_result(
        self, live: ChronosEpoch, index: int, device_id: str, identity_pk: bytes, message: bytes
    ) -> None:
        if live.machine is None:
            self._accept_join(live, index, device_id, identity_pk, message)
        else:
            self._accept(live, live.machine, index, message)
        if live.ready():
            self._advance(live)

    def _stop_waiting(self, live: ChronosEpoch, index: int, why: str) -> None:
        """A node declined this step or left: stop waiting for it (advance if all answered)."""
        if live.machine is None:
            live.refused.add(index)
        elif index in live.machine.pending():
            live.machine.drop(index)
            self._log(live, "reject", index, None)
        if live.ready():
            self._advance(live)

    def _accept_join(
        self, live: ChronosEpoch, index: int, device_id: str, device_pk: bytes, payload: bytes
    ) -> None:
        try:
            joined = msgspec.msgpack.decode(payload, type=ChronosJoined)
        except msgspec.MsgspecError as exc:
            raise malformed("JOIN", index, exc) from exc
        if index in live.joined or index in live.refused:
            return  # a retry (the step is still open)
        try:
            self.admission.check(
                joined,
                scheme=self._scheme,
                device_pk=device_pk,
                session=SESSION,
                index=index,
                nonce=live.nonces.get(index, b""),
            )
        except Refused as exc:
            live.refused.add(index)
            self.notice(device_id, "refused", "admission", str(exc))
            self._log(live, "reject", index, None)
            return
        assert joined.endorsement is not None
        live.joined[index] = joined.identity_pk
        live.entries[index] = joined.endorsement
        self._log(live, "message", index, payload)

    def _accept(self, live: ChronosEpoch, machine: ChronosServer, index: int, data: bytes) -> None:
        try:
            msg = cm.decode_client(data)
        except msgspec.MsgspecError as exc:
            raise malformed(machine.state.value, index, exc) from exc
        if msg.sender != index:
            raise RemoteProtocolError(
                "message sender is not this device",
                state=machine.state.value,
                client=index,
                http_status=403,
            )
        was_pending = index in machine.pending()
        try:
            machine.handle(msg)
        except ProtocolError:
            self._log(live, "reject", index, None)
            raise
        if was_pending:  # masked inputs are summed, not kept: logged by sender only
            masked = isinstance(msg, cm.MaskedInput)
            self._log(live, "masked" if masked else "message", index, None if masked else data)

    def _log(
        self, live: ChronosEpoch, kind: str, sender: int | None, payload: bytes | None
    ) -> None:
        def write(db: Session) -> None:
            repos.append_event(db, live.round_id, live.next_seq(), kind, sender, payload)
            if kind == "advance" and live.machine is not None:
                row = db.get(Round, live.round_id)
                if row is not None and row.closed_at is None:
                    row.state = live.machine.state.value

        self._commit(kind, write)

    def _lost(self, now: float) -> None:
        """A write failed: abandon the epoch (it cannot be rebuilt); close its rows later."""
        if self._live is None:
            return
        log.warning("CHRONOS epoch abandoned", extra={"epoch": self._live.epoch})
        self._live, self._abandoned = None, True
        self.generation += 1

    # ---- the clock ------------------------------------------------------------------------------

    def _on_tick(self, now: float) -> None:
        if self._abandoned:
            self._abort_open(now, WRITE_ABORT)
            self._abandoned = False
            return
        live = self._live
        if live is None:
            if now - self._last_close >= self.settings.round_interval_s:
                self._maybe_open(now)
            return
        if live.collecting():
            if live.ready() or now >= live.deadline:
                self._advance(live)
        elif live.machine is not None and live.machine.state is State.ON_IDLE:
            if now - self._last_close >= self.settings.round_interval_s:
                self._open_round(live, live.machine, now)
        else:
            self._end_epoch(live, now, abort=None)

    def _advance(self, live: ChronosEpoch) -> None:
        now = self._clock()
        machine = live.machine
        if machine is None:
            self._finish_join(live, now)
            return
        try:
            out = machine.advance()
        except ProtocolError as exc:
            self._log(live, "advance", None, None)
            if machine.state is State.ABORTED:
                self._end_epoch(live, now, abort=str(exc))
            else:  # only this round failed: the epoch goes on
                self._close_round(live, machine, now, abort=str(exc))
            return
        self._log(live, "advance", None, None)
        if out:
            tasks = {
                i: ChronosTask(epoch=live.epoch, part=ChronosStep(message=cm.encode(msg)))
                for i, msg in out.items()
            }
            self._send(live, tasks, now)
        elif live.in_round:
            self._close_round(live, machine, now, abort=None)
        else:  # offline phase done: the first round opens on the next tick
            self.generation += 1

    def _send(
        self,
        live: ChronosEpoch,
        tasks: dict[int, ChronosTask],
        now: float,
        timeout_s: float | None = None,
    ) -> None:
        live.step += 1
        live.outbox = tasks
        live.deadline = now + (timeout_s or self.settings.step_timeout_s)
        live.step_timeout_s = self.settings.step_timeout_s
        self.generation += 1

    # ---- epochs ---------------------------------------------------------------------------------

    def _maybe_open(self, now: float) -> None:
        left = self._rounds_left()
        rounds = self.settings.chronos_rounds_per_epoch
        rounds = rounds if left is None else min(rounds, left)
        cohort = self._cohort(now) if rounds > 0 else None
        if cohort is None:
            return
        devices, first = cohort
        version, _ = self._models.latest()
        ids = {d.client_index: d.id for d in devices}
        with self._factory() as db, db.begin():
            put_round_row(
                db,
                first,
                state="JOIN",
                config=b"",
                devices=json.dumps(ids),
                version=version,
                now=now,
                deadline=now + self.settings.step_timeout_s,
            )
        live = ChronosEpoch(first, rounds, ids, first, now + self.settings.step_timeout_s)
        live.step_timeout_s = self.settings.step_timeout_s
        live.nonces = {i: self._rng.random_bytes(32) for i in ids}
        join = {
            i: ChronosTask(
                epoch=first,
                part=ChronosJoin(
                    client_index=i,
                    mode=self.mode,
                    signature_scheme=self._scheme.value,
                    session=SESSION,
                    nonce=live.nonces[i],
                ),
            )
            for i in ids
        }
        live.outbox = join
        self._live = live
        self.generation += 1
        self._audit(
            "epoch_open",
            {"epoch": first, "mode": self.mode.value, "devices": len(ids), "rounds": rounds},
            now,
        )

    def _finish_join(self, live: ChronosEpoch, now: float) -> None:
        participants = tuple(sorted(live.joined))
        if len(participants) < max(self.settings.min_clients, 2):
            self._end_epoch(live, now, abort=f"{len(participants)} devices joined the epoch")
            return
        k, t = self.graph_params(len(participants))
        _, weights = self._models.latest()
        try:
            cfg = EpochConfig(
                session=SESSION,
                epoch=live.epoch,
                mode=self.mode,
                participants=participants,
                k=k,
                t=t,
                dim=weights.size + 1,
                signature_scheme=self._scheme.value,
                first_round=live.epoch,
                rounds=live.rounds,
            )
            live.machine = ChronosServer(
                cfg, dict(live.joined), max_seed_restarts=self.settings.seed_restarts
            )
        except ProtocolError as exc:
            self._end_epoch(live, now, abort=str(exc))
            return
        self._log(live, "advance", None, None)
        with self._factory() as db, db.begin():
            row = db.get(Round, live.round_id)
            if row is not None:
                row.config = cm.encode(cfg)
        setup = ChronosSetup(config=cfg, directory=dict(sorted(live.entries.items())))
        tasks = {u: ChronosTask(epoch=live.epoch, part=setup) for u in participants}
        self._send(live, tasks, now)

    def _end_epoch(self, live: ChronosEpoch, now: float, abort: str | None) -> None:
        with self._factory() as db, db.begin():
            abort_row(db, live.round_id, now, abort or "the epoch ended before this round")
        self._last_close = now
        self._live = None
        self.generation += 1
        self._audit(
            "epoch_complete" if abort is None else "epoch_abort",
            {"epoch": live.epoch, "abort": abort},
            now,
        )

    # ---- rounds ---------------------------------------------------------------------------------

    def _open_round(self, live: ChronosEpoch, machine: ChronosServer, now: float) -> None:
        round_id = live.next_round
        if round_id not in machine.cfg.round_ids:
            self._end_epoch(live, now, abort=None)
            return
        version, weights = self._models.latest()
        try:
            out = machine.open_round(round_id)
        except ProtocolError as exc:
            self._end_epoch(live, now, abort=str(exc))
            return
        deadline = now + self.settings.training_timeout_s  # the nodes train in this step
        devices = json.dumps({i: live.devices[i] for i in out})
        with self._factory() as db, db.begin():
            if put_round_row(
                db,
                round_id,
                state=machine.state.value,
                config=cm.encode(machine.cfg),
                devices=devices,
                version=version,
                now=now,
                deadline=deadline,
            ):
                live.seq = 0  # a new row: its own event sequence
        live.round_id, live.next_round, live.in_round = round_id, round_id + 1, True
        info = ChronosRound(
            model_version=version,
            weights=weights.astype("<f4").tobytes(),
            clip=self.quant.clip,
            max_total_weight=self.quant.max_total_weight,
            deadline=deadline,
        )
        tasks = {
            u: ChronosTask(epoch=live.epoch, part=ChronosStep(message=cm.encode(msg), round=info))
            for u, msg in out.items()
        }
        self._send(live, tasks, now, self.settings.training_timeout_s)
        events.round_opened(
            round_id, len(out), machine.cfg.k, machine.cfg.t, version, deadline - now
        )
        self._audit(
            "round_open",
            {"round": round_id, "epoch": live.epoch, "clients": len(out), "model_version": version},
            now,
        )

    def _close_round(
        self, live: ChronosEpoch, machine: ChronosServer, now: float, abort: str | None
    ) -> None:
        result = result_of(machine.results, live.round_id)
        end = RoundEnd(
            round_id=live.round_id,
            total=result.total if result is not None and abort is None else None,
            survivors=tuple(result.survivors) if result is not None else (),
            culprits=dict(machine.culprits),
            abort=abort,
            audit={"epoch": live.epoch},
        )
        self._end_round(end, now)
        live.in_round, live.outbox = False, {}
        if machine.state is not State.ON_IDLE:
            self._end_epoch(live, now, abort=None if machine.state is State.EPOCH_OVER else abort)

    # ---- recovery -------------------------------------------------------------------------------

    def recover(self) -> None:
        """Abort the rounds of an epoch interrupted by a restart (CHRONOS is not resumed)."""
        self._abort_open(self._clock(), RESTART_ABORT)

    def _abort_open(self, now: float, reason: str) -> None:
        """Close every open round row as aborted with ``reason``."""
        with self._factory() as db, db.begin():
            aborted = [r.id for r in repos.open_rounds(db)]
            for round_id in aborted:
                abort_row(db, round_id, now, reason)
        self.health.ok(now)
        for round_id in aborted:
            log.warning("aborting an interrupted round", extra={"round": round_id})
            events.round_closed(round_id, ABORTED, survivors=(), model_version=None, abort=reason)
            self._audit("round_abort", {"round": round_id, "abort": reason}, now)
        self._last_close = now
