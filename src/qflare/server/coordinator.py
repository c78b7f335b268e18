"""Drives one secure-aggregation round at a time over HTTP-delivered messages.

Every accepted client message is written to the round's event log in the same transaction that
accepts it (masked inputs go into the persisted running sum instead), and every advance is logged,
so a restarted server replays the log through a fresh :class:`SecAggServer` and continues the round
exactly where it stopped: no accepted upload is lost and no client redoes an accepted step.
"""

from __future__ import annotations

import hashlib
import json

import msgspec
import numpy as np
import numpy.typing as npt

from qflare.crypto import CryptoError, verify_signature
from qflare.protocol import messages as m
from qflare.protocol.errors import AbortReason, ProtocolError, RemoteProtocolError
from qflare.protocol.secagg import SecAggServer, State
from qflare.protocol.wire import (
    UPDATE_CONTEXT,
    RoundStart,
    SignedResult,
    decode_notice,
    result_transcript,
)
from qflare.server.coordinator_base import CoordinatorBase
from qflare.server.live import LiveRound
from qflare.store import conduct, repos
from qflare.store.models import Round


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

    # ---- results --------------------------------------------------------------------------------

    def submit(self, device_id: str, result: SignedResult, identity_pk: bytes) -> None:
        """Verify a signed result and feed it to the round's machine, persisting it atomically.

        Raises:
            RemoteProtocolError: wrong round or step (409), bad signature (401), malformed or
                rejected protocol message (400).
        """
        with self._lock:
            live = self._require_step(device_id, result)
            index = live.index_of[device_id]
            try:
                transcript = result_transcript(
                    device_id, result.round_id, result.step, result.message
                )
                verify_signature(
                    self._scheme, identity_pk, result.signature, transcript, context=UPDATE_CONTEXT
                )
            except CryptoError as exc:
                raise RemoteProtocolError(
                    "result signature does not verify",
                    state=live.machine.state.value,
                    client=index,
                    reason=AbortReason.BAD_SIGNATURE,
                    http_status=401,
                ) from exc
            notice = decode_notice(result.message)
            if notice is not None:
                self._noticed(live, index, device_id, notice.kind, notice.reason, notice.detail)
                return
            try:
                msg = m.decode_client(result.message)
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
            if live.machine.ready():
                self._advance(live)

    def _noticed(
        self, live: LiveRound, index: int, device_id: str, kind: str, reason: str, detail: str
    ) -> None:
        """A node declined this round (or leaves): record why and stop waiting for it."""
        self.notice(device_id, kind, reason, detail)
        if index in live.machine.pending():
            live.machine.drop(index)
            self._log(live, "reject", index, None)
        if live.machine.ready():
            self._advance(live)

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
        excluded_before = set(live.machine.excluded)
        was_pending = index in live.machine.pending()
        try:
            live.machine.handle(msg)
        except ProtocolError:
            if index in live.machine.excluded and index not in excluded_before:
                self._log(live, "reject", index, None)
            raise
        if not was_pending:
            return  # an identical retry, ignored by the machine: already in the log
        if isinstance(msg, m.MaskedInput):
            missing = msgspec.msgpack.encode(list(msg.missing))
            self._log(live, "masked", index, missing, acc=live.machine.accumulator)
        else:
            self._log(live, "message", index, m.encode(msg))

    def _log(
        self,
        live: LiveRound,
        kind: str,
        sender: int | None,
        payload: bytes | None,
        acc: bytes | None = None,
    ) -> None:
        with self._factory() as db, db.begin():
            repos.append_event(db, live.round_id, live.next_seq(), kind, sender, payload)
            if acc is not None:
                repos.save_sum(db, live.round_id, acc, len(live.machine.excluded))
            if kind == "advance":
                row = db.get(Round, live.round_id)
                if row is not None:
                    row.state = live.machine.state.value

    # ---- the clock ------------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance on deadlines, finish rounds, open new ones."""
        now = self._clock()
        with self._lock:
            live = self._live
            if live is not None and live.machine.state not in (State.COMPLETED, State.ABORTED):
                if live.machine.ready() or now >= live.deadline:
                    self._advance(live)
                return
            if now - self._last_close >= self.settings.round_interval_s:
                self._maybe_open(now)

    def _advance(self, live: LiveRound) -> None:
        now = self._clock()
        try:
            out = live.machine.advance()
        except ProtocolError as exc:
            self._log(live, "advance", None, None)
            self._close(live, now, abort=str(exc))
            return
        self._log(live, "advance", None, None)
        live.step += 1
        live.outbox = {i: m.encode(msg) for i, msg in out.items()}
        live.deadline = now + self.settings.step_timeout_s
        self.generation += 1
        if live.machine.state is State.COMPLETED:
            self._close(live, now, abort=None)

    # ---- opening and closing --------------------------------------------------------------------

    def _maybe_open(self, now: float) -> None:
        if self.settings.max_rounds and self._completed_rounds() >= self.settings.max_rounds:
            return
        with self._factory() as db:
            devices = self.sample(db, now)
            round_id = repos.next_round_id(db)
        if len(devices) < max(self.settings.min_clients, 2):
            return
        version, weights = self._models.latest()
        n = len(devices)
        ids = tuple(d.client_index for d in devices)
        k, t = self.graph_params(n)
        cfg = m.RoundConfig(
            session="qflare",
            round_id=round_id,
            participants=ids,
            k=k,
            t=t,
            dim=weights.size + 1,
            modulus_bits=32,
            signature_scheme=self._scheme.value,
        )
        with self._factory() as db, db.begin():
            db.add(
                Round(
                    id=round_id,
                    state=State.R0_ADVERTISE_KEYS.value,
                    config=m.encode(cfg),
                    devices=json.dumps({d.client_index: d.id for d in devices}),
                    model_version=version,
                    opened_at=now,
                    deadline_at=now + self.settings.step_timeout_s,
                )
            )
        self.generation += 1
        self._live = self._build_live(
            cfg,
            {d.client_index: d.id for d in devices},
            {d.client_index: (d.identity_pk, d.certificate or b"") for d in devices},
            version,
            weights,
            now,
        )
        self._ledger.append(
            "round_open",
            "server",
            {"round": round_id, "clients": n, "k": k, "t": t, "model_version": version},
            now,
        )

    def _build_live(
        self,
        cfg: m.RoundConfig,
        devices: dict[int, str],
        keys: dict[int, tuple[bytes, bytes]],
        version: int,
        weights: npt.NDArray[np.float32],
        now: float,
    ) -> LiveRound:
        deadline = now + self.settings.step_timeout_s
        identities = {i: pk for i, (pk, _) in keys.items()}
        certificates = {i: cert for i, (_, cert) in keys.items()}
        starts = {
            i: RoundStart(
                config=cfg,
                client_index=i,
                certificates=certificates,
                model_version=version,
                weights=weights.astype(np.float32).tobytes(),
                clip=self.quant.clip,
                max_total_weight=self.quant.max_total_weight,
                deadline=deadline,
            )
            for i in devices
        }
        machine = SecAggServer(cfg, identities, max_seed_restarts=self.settings.seed_restarts)
        return LiveRound(cfg.round_id, cfg, machine, devices, identities, starts, deadline=deadline)

    def _completed_rounds(self) -> int:
        with self._factory() as db:
            return repos.count_rounds(db, State.COMPLETED.value)

    def _close(self, live: LiveRound, now: float, abort: str | None) -> None:
        result = live.machine.result
        version = None
        decoded = self.decode(result) if result is not None else None
        if isinstance(decoded, str):  # refuse a wrapped sum rather than apply it
            abort, result, decoded = decoded, None, None
        state = live.machine.state.value if abort is None else State.ABORTED.value
        with self._factory() as db, db.begin():
            row = db.get(Round, live.round_id)
            assert row is not None
            row.state, row.closed_at, row.abort_reason = state, now, abort
            conduct.set_culprits(db, live.round_id, live.machine.culprits)
            if result is not None and decoded is not None:
                conduct.set_survivors(db, live.round_id, live.machine.survivors)
                row.result = result.tobytes()
                total, weight = decoded
                version = self._models.apply_fedavg(db, total, weight, live.round_id, now)
        self._last_close = now
        self.generation += 1
        payload: dict[str, str | int | float | bool | None] = {
            "round": live.round_id,
            "state": state,
            "survivors": len(live.machine.survivors),
            "model_version": version,
            "abort": abort,
        }
        if live.machine.culprits:
            payload["culprits"] = ",".join(str(c) for c in sorted(live.machine.culprits))
        if result is not None:
            payload["sum_sha256"] = hashlib.sha256(result.tobytes()).hexdigest()
        self._ledger.append(
            "round_complete" if abort is None else "round_abort", "server", payload, now
        )
        self._live = None

    # ---- recovery -------------------------------------------------------------------------------

    def recover(self) -> None:
        """Rebuild the open round (if any) from its event log after a restart."""
        now = self._clock()
        with self._factory() as db:
            open_rows = repos.open_rounds(db)
            if not open_rows:
                return
            row = open_rows[-1]
            events = repos.round_events(db, row.id)
            saved = repos.load_sum(db, row.id)
            devices = {int(i): d for i, d in json.loads(row.devices).items()}
            keys = {
                i: (dev.identity_pk, dev.certificate or b"")
                for i, d in devices.items()
                if (dev := repos.get_device(db, d)) is not None
            }
        cfg = msgspec.msgpack.decode(row.config, type=m.RoundConfig)
        weights = self._models.weights(row.model_version)
        live = self._build_live(cfg, devices, keys, row.model_version, weights, now)
        self._replay(live, events)
        if saved is not None and live.machine.state in (
            State.R2_MASKED_INPUT,
            State.R3_CONSISTENCY,
            State.R4_UNMASK,
        ):
            live.machine.load_accumulator(saved.acc)
        self._live = live

    def _replay(self, live: LiveRound, events: list[repos.EventRecord]) -> None:
        out: dict[int, m.ServerMessage] = {}
        for ev in events:
            if ev.kind == "message" and ev.payload is not None:
                live.machine.handle(m.decode_client(ev.payload))
            elif ev.kind == "masked" and ev.sender in live.machine.pending():
                missing = msgspec.msgpack.decode(ev.payload or b"\x90", type=tuple[int, ...])
                live.machine.resume_masked_input(ev.sender, missing)  # (duplicates are skipped)
            elif ev.kind == "reject" and ev.sender is not None:
                live.machine.drop(ev.sender)
            elif ev.kind == "advance":
                out = live.machine.advance()
                live.step += 1
            live.seq = ev.seq + 1
        live.outbox = {i: m.encode(msg) for i, msg in out.items()}
