"""Server-side throughput measured in-process: handshakes/s and signed masked uploads/s."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from qflare.crypto import DeterministicRng, MlDsa65Signer
from qflare.ledger import Ledger
from qflare.protocol.secagg import State
from qflare.protocol.session import C2S, SecureChannel, SessionInitiator, SessionResponder
from qflare.protocol.wire import SealedFrame, SignedResult
from qflare.server.coordinator import Coordinator
from qflare.server.model import ModelStore
from qflare.server.settings import ServerSettings
from qflare.sim.device import SimDevice
from qflare.sim.identities import SimAuthority
from qflare.store import repos
from qflare.store.db import make_engine, migrate, session_factory
from qflare.store.repos import SqlLedgerStore


def handshake_rate(count: int = 300) -> dict[str, float]:
    """Server-side handshakes per second (respond + confirm), ML-DSA-65 + hybrid ML-KEM-768."""
    rng = DeterministicRng(1)
    server_key = MlDsa65Signer.generate(rng)
    devices = [MlDsa65Signer.generate(rng) for _ in range(16)]
    server_time = 0.0
    now = time.time()
    for i in range(count):
        dev = devices[i % len(devices)]
        initiator = SessionInitiator(f"d{i}", dev, server_key.public_key, rng)
        hello = initiator.hello(now=now)
        t0 = time.perf_counter()
        responder = SessionResponder(server_key, rng)
        reply = responder.respond(hello, dev.public_key, now=now)
        server_time += time.perf_counter() - t0
        finished, _ = initiator.finish(reply, now=now)
        t0 = time.perf_counter()
        responder.confirm(finished)
        server_time += time.perf_counter() - t0
    return {
        "handshakes": count,
        "server_seconds": server_time,
        "handshakes_per_s": count / server_time,
    }


def _coordinator(tmp: Path, n: int, dim: int) -> Coordinator:
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp}/bench.sqlite",
        state_dir=tmp,
        model=f"vector:{dim}",
        dataset="digits",
        min_clients=n,
        max_clients=n,
        step_timeout_s=3600,
        round_interval_s=0,
        max_rounds=1,
    )
    engine = make_engine(settings.database_url)
    migrate(engine)
    factory = session_factory(engine)
    models = ModelStore(factory, "digits", settings.model)
    models.ensure_initial(time.time())
    return Coordinator(
        settings, factory, Ledger(SqlLedgerStore(factory)), models, time.time, DeterministicRng(2)
    )


def _devices(coord: Coordinator, n: int) -> list[SimDevice]:
    rng = DeterministicRng(3)

    def update(
        weights: npt.NDArray[np.float32], round_id: int
    ) -> tuple[npt.NDArray[np.float32], int]:
        return np.full(weights.size, 0.001, dtype=np.float32), 1

    authority = SimAuthority.default()  # enrollment is not what this benchmark measures
    devices = [
        SimDevice(
            f"dev{i}",
            MlDsa65Signer.generate(rng),
            update,
            DeterministicRng(10 + i),
            authority.key,
            authority.cache,
        )
        for i in range(n)
    ]
    with coord._factory() as db, db.begin():
        for i, d in enumerate(devices):
            cert = authority.certify(i, d.signer)
            authority.warm({i: cert})
            repos.add_device(
                db,
                device_id=d.device_id,
                identity_pk=d.signer.public_key,
                kem_pk=b"-",
                scheme="mldsa65",
                now=0.0,
                client_index=i,
                certificate=cert,
            )
    for d in devices:
        coord.seen(d.device_id, time.time())
    return devices


def _channel_pair(
    device: SimDevice, server_key: MlDsa65Signer
) -> tuple[SecureChannel, SecureChannel]:
    rng = DeterministicRng(device.device_id.encode())
    now = time.time()
    init = SessionInitiator(device.device_id, device.signer, server_key.public_key, rng)
    responder = SessionResponder(server_key, rng)
    reply = responder.respond(init.hello(now=now), device.signer.public_key, now=now)
    finished, dev_channel = init.finish(reply, now=now)
    return dev_channel, responder.confirm(finished)


def upload_rate(n: int = 200, dim: int = 100_000) -> dict[str, Any]:
    """Signed, sealed masked uploads of ``4·dim`` bytes opened, verified, summed and persisted per second."""
    with tempfile.TemporaryDirectory() as tmp:
        coord = _coordinator(Path(tmp), n, dim)
        devices = _devices(coord, n)
        coord.tick()
        assert coord.live is not None
        while coord.live.machine.state is not State.R2_MASKED_INPUT:  # R0, seed, R1: untimed
            for d in devices:
                task = coord.task_for(d.device_id)
                assert task is not None
                coord.submit(d.device_id, d.handle(task), d.signer.public_key)
        server_key = MlDsa65Signer.generate(DeterministicRng(4))
        frames = []
        for d in devices:  # device side, untimed: masked input, signed, sealed
            task = coord.task_for(d.device_id)
            assert task is not None
            dev_ch, srv_ch = _channel_pair(d, server_key)
            seq, ct = dev_ch.seal(
                msgspec.msgpack.encode(d.handle(task)), now=time.time(), direction=C2S
            )
            frames.append(
                (
                    d,
                    srv_ch,
                    msgspec.msgpack.encode(
                        SealedFrame(session_id=srv_ch.session_id, seq=seq, ciphertext=ct)
                    ),
                )
            )
        t0 = time.perf_counter()
        for d, srv_ch, body in frames:
            frame = msgspec.msgpack.decode(body, type=SealedFrame)
            plain = srv_ch.open(frame.seq, frame.ciphertext, now=time.time(), direction=C2S)
            result = msgspec.msgpack.decode(plain, type=SignedResult)
            coord.submit(d.device_id, result, d.signer.public_key)
        elapsed = time.perf_counter() - t0
        size = len(frames[0][2])
    return {"uploads": n, "upload_bytes": size, "seconds": elapsed, "uploads_per_s": n / elapsed}
