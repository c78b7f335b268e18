"""Drives one secure-aggregation round at a time over HTTP-delivered messages.

**The event log is the truth.** Every accepted client message is written to the round's event
log (masked inputs into the persisted running sum instead), and every advance is logged; the
step that finishes a round is written together with the round's result and the new model in one
transaction. Under the coordinator's lock a message goes through the machine and then its row is
committed; if that commit fails, the in-memory round is thrown away and rebuilt from the log
(:func:`~qflare.server.round_replay.load_round`), so memory never runs ahead of the database:
the client gets 503 with ``Retry-After`` and its retry is judged by the rebuilt machine, exactly
as after a restart. While the database refuses writes no new round opens, and the current step's
deadline moves so that nobody is dropped for the server's failure.

A restarted server replays the newest open round and closes every other open round as aborted
with a reason (also the newest one when the global model has moved on since it opened).
"""

from __future__ import annotations

import contextlib
import json

import msgspec
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from qflare.protocol import messages as m
from qflare.protocol.errors import AbortReason, ProtocolError, RemoteProtocolError
from qflare.protocol.secagg import State
from qflare.protocol.wire import SignedResult
from qflare.server import events
from qflare.server.chronos_live import abort_row
from qflare.server.coordinator_base import ABORTED, CoordinatorBase, RoundEnd
from qflare.server.live import LiveRound
from qflare.server.round_replay import build_live, load_round
from qflare.store import repos
from qflare.store.db import DatabaseUnavailable
from qflare.store.models import Round

__all__ = ["Coordinator"]

SUPERSEDED = "server restarted: a newer round was opened after this one"


class Coordinator(CoordinatorBase[LiveRound]):
    """The server's round driver (thread-safe; called from request handlers and a ticker).

    Args:
        settings: Server settings.
        factory: Database session factory.
        ledger: Audit ledger.
        models: Global model store.
        clock: Current time.
        rng: Randomness for graph seeds.
    """

    _restore: tuple[int, float] | None = None  # (round, deadline) to rebuild after a failure

    # ---- results ----------------------------------------------------------------------------------

    def _unavailable(self, now: float) -> bool:
        """The database is down, or the round a failed write left behind is not rebuilt yet."""
        if self.health.blocked(now) or self._restore is not None:
            self._retry_restore(now)
        return self.health.blocked(now) or self._restore is not None

    def _verified(
        self, device_id: str, result: SignedResult, identity_pk: bytes
    ) -> tuple[LiveRound, int]:
        live = self._require_step(device_id, result)
        index = live.index_of[device_id]
        self.verify_result(device_id, result, identity_pk, live.machine.state.value, index)
        return live, index

    def _accept_result(
        self, live: LiveRound, index: int, device_id: str, identity_pk: bytes, message: bytes
    ) -> None:
        try:
            msg = m.decode_client(message)
        except msgspec.MsgspecError as exc:
            raise RemoteProtocolError(
                f"malformed protocol message: {exc}",
                state=live.machine.state.value,
                client=index,
                reason=AbortReason.MALFORMED_MESSAGE,
            ) from exc
        if msg.sender != index:
            raise RemoteProtocolError(
                "message sender is not this device",
                state=live.machine.state.value,
                client=index,
                http_status=403,
            )
        self._accept(live, index, msg)
        if live.machine.ready():  # the message is durable: a failed advance is the tick's
            self._guarded("advance", lambda: self._advance(live), raise_=False)

    def _stop_waiting(self, live: LiveRound, index: int, why: str) -> None:
        """A node declined this round or left: stop waiting for it."""
        if index in live.machine.pending():
            live.machine.drop(index)
            self._commit("reject", lambda db: self._log(db, live, "reject", index, None))
            events.device_excluded(live.round_id, index, live.devices[index], why)
        if live.machine.ready():
            self._guarded("advance", lambda: self._advance(live), raise_=False)

    def _require_step(self, device_id: str, result: SignedResult) -> LiveRound:
        live = self._live
        if live is None or result.round_id != live.round_id or device_id not in live.index_of:
            raise RemoteProtocolError(
                "no such round for this device", state="NONE", http_status=409
            )
        if result.step != live.step or result.device_id != device_id:
            raise RemoteProtocolError(
                f"step {result.step} is not the current step {live.step}",
                state=live.machine.state.value,
                http_status=409,
            )
        return live

    def _accept(self, live: LiveRound, index: int, msg: m.ClientMessage) -> None:
        machine = live.machine
        if isinstance(msg, m.MaskedInput) and index in live.masked:
            return  # re-sent after its answer was lost (e.g. by a restart): already summed
        excluded_before = dict(machine.excluded)
        was_pending = index in machine.pending()
        try:
            machine.handle(msg)
        except ProtocolError:
            if index in machine.excluded and index not in excluded_before:
                self._commit("reject", lambda db: self._log(db, live, "reject", index, None))
                events.excluded_since(
                    live.round_id, excluded_before, machine.excluded, live.devices
                )
            raise
        if not was_pending:
            return  # an identical retry, ignored by the machine: already in the log
        if isinstance(msg, m.MaskedInput):
            missing = msgspec.msgpack.encode(list(msg.missing))
            acc = machine.accumulator
            self._commit(
                "masked input", lambda db: self._log(db, live, "masked", index, missing, acc)
            )
            live.masked.add(index)
        else:
            payload = m.encode(msg)
            self._commit("message", lambda db: self._log(db, live, "message", index, payload))

    def _log(
        self,
        db: Session,
        live: LiveRound,
        kind: str,
        sender: int | None,
        payload: bytes | None,
        acc: bytes | None = None,
    ) -> None:
        repos.append_event(db, live.round_id, live.next_seq(), kind, sender, payload)
        if acc is not None:
            repos.save_sum(db, live.round_id, acc, len(live.machine.excluded))
        if kind == "advance":
            row = db.get(Round, live.round_id)
            if row is not None:
                row.state = live.machine.state.value

    # ---- the clock ------------------------------------------------------------------------------

    def _on_tick(self, now: float) -> None:
        if self._restore is not None:
            self._retry_restore(now)
            return
        live = self._live
        if live is not None:
            if live.terminal:  # rebuilt from a log whose last advance ended the round
                self._close(live, now, live.abort)
            elif live.machine.ready() or now >= live.deadline:
                self._advance(live)
            return
        if now - self._last_close >= self.settings.round_interval_s:
            self._maybe_open(now)

    def _advance(self, live: LiveRound) -> None:
        now = self._clock()
        machine = live.machine
        before, excluded_before = machine.state.value, dict(machine.excluded)
        try:
            out = machine.advance()
        except ProtocolError as exc:
            out, live.abort = {}, str(exc)
        if live.terminal:
            self._close(live, now, live.abort, advanced=True)
            return
        self._commit("advance", lambda db: self._log(db, live, "advance", None, None))
        events.excluded_since(live.round_id, excluded_before, machine.excluded, live.devices)
        self.forget(live.devices[i] for i in set(machine.excluded) - set(excluded_before))
        events.step_closed(live.round_id, live.step, before, machine.state.value, len(out))
        live.step += 1
        live.outbox = {i: m.encode(msg) for i, msg in out.items()}
        live.deadline = now + self.settings.step_timeout_s
        self.generation += 1

    # ---- opening and closing --------------------------------------------------------------------

    def _maybe_open(self, now: float) -> None:
        left = self._rounds_left()
        cohort = self._cohort(now) if left is None or left > 0 else None
        if cohort is None:
            return
        devices, round_id = cohort
        model = self._models.latest()
        n = len(devices)
        k, t = self.graph_params(n)
        cfg = m.RoundConfig(
            session="qflare",
            round_id=round_id,
            participants=tuple(d.client_index for d in devices),
            k=k,
            t=t,
            dim=model[1].size + 1,
            modulus_bits=32,
            signature_scheme=self._scheme.value,
        )
        deadline = now + self.settings.training_timeout_s
        ids = {d.client_index: d.id for d in devices}
        row = Round(
            id=round_id,
            state=State.R0_ADVERTISE_KEYS.value,
            config=m.encode(cfg),
            devices=json.dumps(ids),
            model_version=model[0],
            opened_at=now,
            deadline_at=deadline,
        )
        self._commit("round open", lambda db: db.add(row))
        keys = {d.client_index: (d.identity_pk, d.certificate or b"") for d in devices}
        self._live = build_live(self.settings, cfg, ids, keys, model, deadline)
        self.generation += 1
        events.round_opened(round_id, n, k, t, model[0], deadline - now)
        self._audit(
            "round_open",
            {"round": round_id, "clients": n, "k": k, "t": t, "model_version": model[0]},
            now,
        )

    def _close(
        self, live: LiveRound, now: float, abort: str | None, *, advanced: bool = False
    ) -> None:
        """Write the round's end (with its last advance) in one transaction, then forget it."""
        machine = live.machine
        end = RoundEnd(
            round_id=live.round_id,
            total=machine.result if abort is None else None,
            survivors=machine.survivors,
            culprits=dict(machine.culprits),
            abort=abort,
        )
        also = (lambda db: self._log(db, live, "advance", None, None)) if advanced else None
        self._end_round(end, now, also=also)
        self._live = None

    # ---- failures and recovery ------------------------------------------------------------------

    def _lost(self, now: float) -> None:
        """A write failed: forget the in-memory round and rebuild it from the log."""
        live = self._live
        if live is None:
            return
        self._live = None
        self.generation += 1
        self._restore = (live.round_id, live.deadline)
        self._retry_restore(now)

    def _retry_restore(self, now: float) -> None:
        """Rebuild the round a failed write left behind (reads usually still work).

        Never raises: while the database cannot be read, :attr:`_restore` stays set, no round
        is served or opened, and the tick tries again.
        """
        if self._restore is None:
            return
        round_id, deadline = self._restore
        try:
            with self._factory() as db:
                row = db.get(Round, round_id)
                live = None
                if row is not None and row.closed_at is None:
                    live = load_round(db, row, self._models, self.settings, deadline)
        except SQLAlchemyError as exc:
            self.health.failed(exc, now, "rebuild the round from its log")
            return
        except (ProtocolError, LookupError) as exc:  # only if the log was edited
            with contextlib.suppress(DatabaseUnavailable):
                self._abort_open([(round_id, f"its event log does not replay: {exc}")], now)
                self._restore = None
            return
        self._restore = None
        if live is not None:  # nobody is dropped for the server's failure
            live.deadline = max(deadline, now + self._timeout_of(live))
            self._live = live
            self.generation += 1

    def _timeout_of(self, live: LiveRound) -> float:
        return self.settings.training_timeout_s if live.step == 0 else self.settings.step_timeout_s

    def recover(self) -> None:
        """After a restart: resume the newest open round from its log, abort every other.

        The newest is aborted too when the global model moved on since it opened (it would
        train an old model) or when its log does not replay.
        """
        now = self._clock()
        with self._factory() as db:
            rows = list(repos.open_rounds(db))
            latest = repos.latest_model(db)
        stale = [(r.id, SUPERSEDED) for r in rows[:-1]]
        newest = rows[-1] if rows else None
        if newest is not None and latest is not None and newest.model_version != latest.version:
            why = f"server restarted: model version {newest.model_version} is not the latest"
            stale.append((newest.id, f"{why} ({latest.version})"))
            newest = None
        if newest is not None:
            try:
                with self._factory() as db:
                    live = load_round(db, newest, self._models, self.settings, 0.0)
            except (ProtocolError, LookupError) as exc:
                stale.append((newest.id, f"server restarted: its event log does not replay: {exc}"))
            else:
                live.deadline = now + self._timeout_of(live)
                self._live = live
        self._abort_open(stale, now)

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
