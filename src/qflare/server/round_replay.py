"""A SecAgg round in memory, built from its parameters or rebuilt from its event log.

The event log is the truth: after a restart, and after any write that failed, the coordinator
replaces its in-memory round with :func:`load_round` — a fresh :class:`SecAggServer` fed every
logged message, rejection and advance in order, with the persisted running sum of masked inputs.
Replaying is deterministic, so the rebuilt machine is the one that existed when the last
committed write was made.
"""

from __future__ import annotations

import json

import msgspec
import numpy as np
import numpy.typing as npt
from sqlalchemy.orm import Session

from qflare.protocol import messages as m
from qflare.protocol.errors import ProtocolError
from qflare.protocol.secagg import SecAggServer, State
from qflare.protocol.wire import SecAggStart
from qflare.server.live import LiveRound
from qflare.server.model import ModelStore
from qflare.server.settings import ServerSettings
from qflare.store import repos
from qflare.store.models import Round

__all__ = ["build_live", "load_round", "replay"]

_SUMMED = (State.R2_MASKED_INPUT, State.R3_CONSISTENCY, State.R4_UNMASK)


def build_live(
    settings: ServerSettings,
    cfg: m.RoundConfig,
    devices: dict[int, str],
    keys: dict[int, tuple[bytes, bytes]],
    model: tuple[int, npt.NDArray[np.float32]],
    deadline: float,
) -> LiveRound:
    """A round at step 0: the machine, and each device's :class:`SecAggStart` task.

    Args:
        settings: Server settings (quantisation, seed restarts, step timeout).
        cfg: Public round parameters.
        devices: Client index -> device id.
        keys: Client index -> (identity public key, certificate).
        model: (version, weights) the round trains from.
        deadline: When step 0 (training) closes.
    """
    version, weights = model
    identities = {i: pk for i, (pk, _) in keys.items()}
    certificates = {i: cert for i, (_, cert) in keys.items()}
    starts = {
        i: SecAggStart(
            config=cfg,
            client_index=i,
            certificates=certificates,
            model_version=version,
            weights=weights.astype(np.float32).tobytes(),
            clip=settings.clip,
            max_total_weight=settings.max_total_weight,
            deadline=deadline,
        )
        for i in devices
    }
    machine = SecAggServer(cfg, identities, max_seed_restarts=settings.seed_restarts)
    live = LiveRound(cfg.round_id, cfg, machine, devices, identities, starts, deadline=deadline)
    live.step_timeout_s = settings.step_timeout_s
    return live


def replay(live: LiveRound, events: list[repos.EventRecord]) -> None:
    """Feed a round's logged events, in order, through its fresh machine.

    An advance that aborts leaves the machine ``ABORTED`` with the reason in ``live.abort``
    (the round is then closed by the caller).
    """
    machine = live.machine
    out: dict[int, m.ServerMessage] = {}
    for ev in events:
        if ev.kind == "message" and ev.payload is not None:
            machine.handle(m.decode_client(ev.payload))
        elif ev.kind == "masked" and ev.sender is not None and ev.sender in machine.pending():
            missing = msgspec.msgpack.decode(ev.payload or b"\x90", type=tuple[int, ...])
            machine.resume_masked_input(ev.sender, missing)
            live.masked.add(ev.sender)
        elif ev.kind == "reject" and ev.sender is not None:
            machine.drop(ev.sender)
        elif ev.kind == "advance":
            try:
                out = machine.advance()
            except ProtocolError as exc:
                out, live.abort = {}, str(exc)
            live.step += 1
        live.seq = ev.seq + 1
    live.outbox = {i: m.encode(msg) for i, msg in out.items()}


def load_round(
    db: Session, row: Round, models: ModelStore, settings: ServerSettings, deadline: float
) -> LiveRound:
    """Rebuild open round ``row`` from its event log and persisted sum.

    Raises:
        ProtocolError: the log does not replay (the caller aborts the round).
        LookupError: its model version is not stored.
        sqlalchemy.exc.SQLAlchemyError: the database cannot be read.
    """
    devices = {int(i): d for i, d in json.loads(row.devices).items()}
    keys = {
        i: (dev.identity_pk, dev.certificate or b"")
        for i, d in devices.items()
        if (dev := repos.get_device(db, d)) is not None
    }
    cfg = msgspec.msgpack.decode(row.config, type=m.RoundConfig)
    model = (row.model_version, models.weights(row.model_version))
    live = build_live(settings, cfg, devices, keys, model, deadline)
    replay(live, repos.round_events(db, row.id))
    saved = repos.load_sum(db, row.id)
    if saved is not None and live.machine.state in _SUMMED:
        live.machine.load_accumulator(saved.acc)
    return live
