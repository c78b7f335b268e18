"""The processes of ``qflare bench chronos-net``: one server, one process per client.

Each peer runs the same sans-IO machines as the in-process benchmark (SecAgg+ from the engine,
CHRONOS and CHRONOS-DM with software keystores) over real TCP connections made by
:mod:`qflare.bench.netpeer_io`. The server times each active phase from the moment it sends the
round's first messages to the moment it knows the aggregate, and checks the aggregate against
the plain sum. It prints one JSON line when done.

Run as ``python -m qflare.bench.netpeer server PLAN`` or ``... client PLAN ID HOST PORT``, where
``PLAN`` is the JSON of :class:`PeerPlan`. Keys come from the plan's seed (benchmark only).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import msgspec
import numpy as np

from qflare.bench.chronos_runs import chronos_config, make_inputs
from qflare.bench.netpeer_io import (
    ACK,
    BYE,
    EPOCH,
    HELLO,
    IDLE,
    MSG,
    SECAGG,
    Hub,
    Inbound,
    frame,
    no_delay,
    pump,
)
from qflare.crypto import DeterministicRng, MaskPrg, SignatureScheme, Signer, make_signer
from qflare.protocol import messages as sm
from qflare.protocol.chronos import ChronosClient, ChronosServer, EpochConfig, Mode
from qflare.protocol.chronos import messages as cm
from qflare.protocol.secagg import RoundRegistry, SecAggClient, SecAggServer, State
from qflare.sim.chronos_cohort import software_keystores
from qflare.sim.cohort import expected_sum
from qflare.sim.identities import SimAuthority

MODES = {"chronos": Mode.CHRONOS, "chronos_dm": Mode.CHRONOS_DM}


@dataclass(frozen=True)
class PeerPlan:
    """What every peer agrees on: round parameters, repeats, and the one-way delay."""

    clients: int
    ring_dim: int
    k: int
    t: int
    scheme: str
    seed: int
    repeat: int
    owd_s: float


def _signer(plan: PeerPlan, u: int) -> Signer:
    rng = DeterministicRng(f"{plan.seed}/secagg-id{u}".encode())
    return make_signer(SignatureScheme(plan.scheme), rng)


def _round_config(plan: PeerPlan, round_id: int) -> sm.RoundConfig:
    return sm.RoundConfig(
        session="bench-net",
        round_id=round_id,
        participants=tuple(range(plan.clients)),
        k=plan.k,
        t=plan.t,
        dim=plan.ring_dim,
        signature_scheme=plan.scheme,
    )


def _epoch_config(plan: PeerPlan, name: str) -> EpochConfig:
    epoch = 1 + list(MODES).index(name)
    n, ring = plan.clients, plan.ring_dim
    return chronos_config(MODES[name], n, plan.k, plan.t, ring, plan.scheme, epoch, plan.repeat)


def _exact(total: Any, survivors: tuple[int, ...], plan: PeerPlan) -> bool:
    want = expected_sum(make_inputs(plan.ring_dim), survivors, plan.ring_dim, 32)
    return total is not None and bool(np.array_equal(total, want))


# ---- server ------------------------------------------------------------------------------------


async def _exchange(hub: Hub, frames: Mapping[int, bytes], on: Callable[[Inbound], None]) -> None:
    """Send one step's frames and hand every reply to ``on`` as it arrives."""
    await hub.send(frames)
    pending = set(frames)
    while pending:
        item = await hub.inbox.get()
        on(item)
        pending.discard(item.sender)


async def _secagg_rounds(hub: Hub, plan: PeerPlan) -> dict[str, Any]:
    ids = {u: _signer(plan, u).public_key for u in range(plan.clients)}
    times, exact = [], []
    for round_id in range(1, plan.repeat + 1):
        rc = _round_config(plan, round_id)
        server = SecAggServer(rc, ids)

        def handle(item: Inbound, server: SecAggServer = server) -> None:
            server.handle(sm.decode_client(item.payload))

        t0 = time.perf_counter()
        frames = {u: frame(SECAGG, sm.encode(rc)) for u in rc.participants}
        while server.state not in (State.COMPLETED, State.ABORTED):
            await _exchange(hub, frames, handle)
            outbox = server.advance()
            frames = {u: frame(MSG, sm.encode(msg)) for u, msg in outbox.items()}
        times.append(time.perf_counter() - t0)
        exact.append(_exact(server.result, server.survivors, plan))
    return {"active_s": times, "exact_sum": all(exact)}


async def _chronos_epoch(hub: Hub, plan: PeerPlan, name: str) -> dict[str, Any]:
    cfg = _epoch_config(plan, name)
    ids = {u: ks.identity_public_key for u, ks in software_keystores(cfg, seed=plan.seed).items()}
    server = ChronosServer(cfg, ids)
    everyone = range(plan.clients)

    def handle(item: Inbound) -> None:
        server.handle(cm.decode_client(item.payload))

    t0 = time.perf_counter()
    frames = {u: frame(EPOCH, cm.encode(cfg)) for u in everyone}
    while frames:
        await _exchange(hub, frames, handle)
        frames = {u: frame(MSG, cm.encode(msg)) for u, msg in server.advance().items()}
    offline_s = time.perf_counter() - t0
    times, exact = [], []
    for round_id in cfg.round_ids:
        await _exchange(hub, {u: frame(IDLE) for u in everyone}, lambda _: None)
        t0 = time.perf_counter()
        frames = {u: frame(MSG, cm.encode(msg)) for u, msg in server.open_round(round_id).items()}
        while frames:
            await _exchange(hub, frames, handle)
            frames = {u: frame(MSG, cm.encode(msg)) for u, msg in server.advance().items()}
        times.append(time.perf_counter() - t0)
        result = server.results[-1]
        exact.append(_exact(result.total, result.survivors, plan))
    return {"active_s": times, "exact_sum": all(exact), "offline_s": offline_s}


async def serve(plan: PeerPlan, host: str, port: int) -> dict[str, Any]:
    """Run every protocol's rounds against the clients; return the measurements."""
    hub = Hub(plan.owd_s)
    server = await hub.serve(host, port, plan.clients)
    bound = server.sockets[0].getsockname()[1]
    print(json.dumps({"listening": bound}), flush=True)
    await hub.joined()
    out: dict[str, Any] = {"secagg_plus": await _secagg_rounds(hub, plan)}
    for name in MODES:
        out[name] = await _chronos_epoch(hub, plan, name)
    for entry in out.values():
        entry["active_s_median"] = statistics.median(entry["active_s"])
    await hub.close()
    server.close()
    return out


# ---- client ------------------------------------------------------------------------------------


class _Device:
    """One client's protocol state across rounds and epochs."""

    def __init__(self, plan: PeerPlan, client_id: int) -> None:
        self.plan, self.id = plan, client_id
        self.signer = _signer(plan, client_id)
        self.ids = {u: _signer(plan, u).public_key for u in range(plan.clients)}
        authority = SimAuthority.default()  # every peer process certifies the same keys
        certs = {u: authority.certify(u, _signer(plan, u)) for u in range(plan.clients)}
        authority.warm(certs)  # verified once before the epoch, not inside a timed round
        self.directory = authority.directory(certs, SignatureScheme(plan.scheme))
        self.registry, self.prg = RoundRegistry(), MaskPrg(plan.ring_dim, 32)
        self.inputs = make_inputs(plan.ring_dim)
        self.secagg: SecAggClient | None = None
        self.chronos: ChronosClient | None = None
        self.next_input: Any = self.inputs(client_id)

    def on_frame(self, kind: bytes, payload: bytes) -> bytes | None:
        """The reply to one frame (``None``: nothing to send)."""
        if kind == SECAGG:
            rc = sm.decode_as(payload, sm.RoundConfig)
            rng = DeterministicRng(f"{self.plan.seed}/c{self.id}/r{rc.round_id}".encode())
            self.chronos = None
            self.secagg = SecAggClient(
                rc, self.id, self.signer, self.directory, rng, self.registry, self.prg
            )
            return frame(MSG, sm.encode(self.secagg.start()))
        if kind == EPOCH:
            cfg = msgspec.msgpack.decode(payload, type=EpochConfig)
            stores = software_keystores(cfg, seed=self.plan.seed)
            keys = {u: ks.identity_public_key for u, ks in stores.items()}
            entries = SimAuthority.default().endorsed(keys, SignatureScheme(cfg.signature_scheme))
            self.secagg, self.chronos = None, ChronosClient(cfg, stores[self.id], entries)
            return frame(MSG, cm.encode(self.chronos.start()))
        if kind == IDLE and self.chronos is not None:
            self.chronos.precompute_next()
            return frame(ACK)
        if kind == MSG:
            return frame(MSG, self._protocol(payload))
        raise ValueError(f"unexpected frame kind {kind!r}")

    def _take_input(self) -> Any:
        """The update, made before the round (training is not part of the active phase)."""
        vector, self.next_input = self.next_input, None
        return vector if vector is not None else self.inputs(self.id)

    def refill(self) -> None:
        """Make the next round's update once the current reply is on its way."""
        if self.next_input is None:
            self.next_input = self.inputs(self.id)

    def _protocol(self, payload: bytes) -> bytes:
        if self.secagg is not None:
            smsg = sm.decode_server(payload)
            if isinstance(smsg, sm.ShareRelay):
                self.secagg.set_input(self._take_input())
            return sm.encode(self.secagg.receive(smsg))
        if self.chronos is None:
            raise ValueError("protocol message outside a round")
        cmsg = cm.decode_server(payload)
        if isinstance(cmsg, cm.RoundStart):
            self.chronos.set_input(self._take_input())
        return cm.encode(self.chronos.receive(cmsg))


async def _connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    for _ in range(200):
        try:
            return await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.05)
    raise ConnectionError(f"no server at {host}:{port}")


async def run_client(plan: PeerPlan, client_id: int, host: str, port: int) -> None:
    """Connect, then answer frames until the server says goodbye."""
    device = _Device(plan, client_id)
    reader, writer = await _connect(host, port)
    no_delay(writer)
    writer.write(frame(HELLO, client_id.to_bytes(4, "big")))
    inbox: asyncio.Queue[Inbound] = asyncio.Queue()
    task = asyncio.create_task(pump(reader, -1, plan.owd_s, inbox))
    while True:
        item = await inbox.get()
        if item.kind == BYE:
            break
        reply = device.on_frame(item.kind, item.payload)
        if reply is not None:
            writer.write(reply)
            device.refill()
            await writer.drain()
    task.cancel()
    writer.close()


def main(argv: list[str]) -> int:
    """Entry point of a peer process."""
    role, plan = argv[0], PeerPlan(**json.loads(argv[1]))
    if role == "server":
        result = asyncio.run(serve(plan, argv[2], int(argv[3])))
        print(json.dumps({"result": result, "plan": asdict(plan)}), flush=True)
    elif role == "client":
        asyncio.run(run_client(plan, int(argv[2]), argv[3], int(argv[4])))
    else:
        raise SystemExit(f"unknown role {role}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
