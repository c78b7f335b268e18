"""Aggregation inside the (simulated) server enclave: per-upload open rate and FINISH time.

Two measurements, each against a real :class:`~qflare.tee.sim.SimEnclave` process running the
aggregator TA, so every figure includes the IPC into that process:

* **open**: ``open_uploads`` uploads of ``open_dim`` float32 values, each signed with ML-DSA-65
  and encrypted to the enclave's hybrid KEM key, submitted one by one (sealing happens before
  the clock starts). The time per SUBMIT covers: msgpack encoding of the command, the socket
  round trip (the upload is copied host -> kernel -> enclave process, about five copies in
  all), decoding, ML-DSA-65 verification, ML-KEM-768 + X25519 decapsulation, AES-256-GCM
  decryption, the finite check and the copy into the round's matrix. As a floor, the same
  uploads are also submitted to a round of another session, where the enclave refuses them
  after decoding and before any cryptography: that is the IPC and decoding cost alone.
* **finish**: ``clients`` updates of ``dim`` values (``outliers`` of them sign-flipped x10), one
  round per defence; the time of FINISH alone (the defence over the ``(n, d)`` matrix held in
  enclave memory, plus returning the float64 delta over the channel) is reported per defence.

The enclave process inherits the environment, so ``OPENBLAS_NUM_THREADS`` (recorded in the
result) sets its BLAS threads. On a loaded two-core machine, two spinning BLAS threads make
Krum's Gram products several times slower than one thread.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from qflare.bench.robust import TARGETS_S
from qflare.crypto import DeterministicRng, MlDsa65Signer, SignatureScheme, SystemRng
from qflare.protocol.enclave import encode_upload, seal_update
from qflare.protocol.identity import (
    AuthorityKey,
    CertificateBody,
    encode_authority_key,
    issue_certificate,
)
from qflare.tee.aggregator_host import AggregatorHost
from qflare.tee.aggregator_ta import AggregatorConfig

OPEN_TARGET_PER_S = 200.0
FINISH_DEFENCES: tuple[str, ...] = ("fedavg", "cosine", "median", "trimmed-mean", "krum")
_SESSION = "bench-enclave"
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class EnclaveBenchConfig:
    """One run: the open-rate round and the FINISH rounds."""

    clients: int = 100
    dim: int = 1_000_000
    outliers: float = 0.05
    open_uploads: int = 200
    open_dim: int = 100_000
    defences: tuple[str, ...] = FINISH_DEFENCES
    seed: int = 0


@dataclass(frozen=True)
class _Device:
    device_id: str
    signer: MlDsa65Signer
    certificate: bytes


def _loadavg() -> list[float]:
    try:
        with open("/proc/loadavg", encoding="ascii") as fh:
            return [float(v) for v in fh.read().split()[:3]]
    except OSError:
        return list(os.getloadavg())


def _federation(n: int, seed: int) -> tuple[AggregatorConfig, list[_Device]]:
    """An authority, ``n`` ML-DSA-65 devices it certified, and the TA config pinning it."""
    rng = DeterministicRng(seed)
    authority = MlDsa65Signer.generate(rng)
    key = AuthorityKey(scheme=SignatureScheme.MLDSA65, public_key=authority.public_key)
    devices = []
    for i in range(n):
        signer = MlDsa65Signer.generate(rng)
        body = CertificateBody(
            authority=key.fingerprint,
            serial=i,
            device_id=f"bench-{i}",
            client_index=i,
            scheme=SignatureScheme.MLDSA65,
            identity_pk=signer.public_key,
            kem_pk=b"",
            issued_at=0.0,
        )
        devices.append(_Device(f"bench-{i}", signer, issue_certificate(authority, body)))
    return AggregatorConfig(authority=encode_authority_key(key), min_accepted=2), devices


def _seal(
    device: _Device,
    enclave_key: bytes,
    round_id: int,
    vector: npt.NDArray[np.float32],
    session: str = _SESSION,
) -> bytes:
    upload = seal_update(
        vector,
        weight=1.0,
        session=session,
        round_id=round_id,
        device_id=device.device_id,
        enclave_public_key=enclave_key,
        signer=device.signer,
        rng=SystemRng(),
    )
    return encode_upload(upload)


def _timed_submits(host: AggregatorHost, uploads: list[bytes]) -> tuple[list[float], int]:
    times: list[float] = []
    accepted = 0
    for upload in uploads:
        start = time.perf_counter()
        result = host.submit(upload)
        times.append(time.perf_counter() - start)
        accepted += result.accepted
    return times, accepted


def _rate(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "per_s": len(times) / sum(times),
        "median_ms": 1e3 * statistics.median(times),
        "p90_ms": 1e3 * ordered[int(0.9 * (len(ordered) - 1))],
    }


def _open_case(
    host: AggregatorHost, devices: list[_Device], cfg: EnclaveBenchConfig, round_id: int
) -> dict[str, Any]:
    rng = np.random.default_rng(cfg.seed)
    vectors = rng.standard_normal((len(devices), cfg.open_dim), dtype=np.float32)
    key = host.public_key
    decoys = [_seal(d, key, round_id, v, "other") for d, v in zip(devices, vectors, strict=True)]
    uploads = [_seal(d, key, round_id, v) for d, v in zip(devices, vectors, strict=True)]
    host.begin_round(
        session=_SESSION,
        round_id=round_id,
        dim=cfg.open_dim,
        certificates=tuple(d.certificate for d in devices),
        min_accepted=2,
    )
    # the floor: uploads of another session, refused after decoding, before any cryptography
    ipc_times, _ = _timed_submits(host, decoys)
    times, accepted = _timed_submits(host, uploads)
    host.finish(round_id)
    rate = _rate(times)
    return {
        "uploads": len(uploads),
        "dim": cfg.open_dim,
        "signature": "mldsa65",
        "upload_bytes": len(uploads[0]),
        "accepted": accepted,
        "open": rate,
        "ipc_and_decode_only": _rate(ipc_times),
        "target_per_s": OPEN_TARGET_PER_S,
        "met": rate["per_s"] >= OPEN_TARGET_PER_S,
    }


def _rows(cfg: EnclaveBenchConfig) -> Iterator[npt.NDArray[np.float32]]:
    """The round's updates one at a time (outliers first), without an ``(n, d)`` host copy."""
    rng = np.random.default_rng(cfg.seed + 1)
    direction = rng.standard_normal(cfg.dim, dtype=np.float32)
    bad = min(round(cfg.outliers * cfg.clients), cfg.clients - 1)
    for i in range(cfg.clients):
        row = rng.standard_normal(cfg.dim, dtype=np.float32)
        row *= 0.5
        row += direction
        if i < bad:
            row *= -10.0
        yield row


def _reference(cfg: EnclaveBenchConfig) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(cfg.seed + 1)
    direction = rng.standard_normal(cfg.dim, dtype=np.float32)
    noise = np.random.default_rng(cfg.seed + 2).standard_normal(cfg.dim, dtype=np.float32)
    return direction + 0.5 * noise


def _finish_case(
    host: AggregatorHost,
    devices: list[_Device],
    cfg: EnclaveBenchConfig,
    defence: str,
    round_id: int,
) -> dict[str, Any]:
    reference = _reference(cfg) if defence == "cosine" else None
    host.begin_round(
        session=_SESSION,
        round_id=round_id,
        dim=cfg.dim,
        certificates=tuple(d.certificate for d in devices),
        min_accepted=2,
        defence=defence,
        reference=reference,
    )
    submit_s = 0.0
    for device, row in zip(devices, _rows(cfg), strict=True):
        upload = _seal(device, host.public_key, round_id, row)
        start = time.perf_counter()
        host.submit(upload)
        submit_s += time.perf_counter() - start
    start = time.perf_counter()
    out = host.finish(round_id)
    finish_s = time.perf_counter() - start
    target = TARGETS_S.get(defence)
    return {
        "finish_s": finish_s,
        "target_s": target,
        "met": None if target is None else finish_s <= target,
        "submit_mean_ms": 1e3 * submit_s / cfg.clients,
        "accepted": out.accepted,
        "rejected": out.rejected,
        "delta_bytes": out.delta.nbytes,
    }


def run_enclave_bench(
    cfg: EnclaveBenchConfig,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run both measurements against one simulated enclave; JSON-ready result."""
    say = progress or (lambda _: None)
    load_before = _loadavg()
    say("certifying devices")
    config, devices = _federation(max(cfg.clients, cfg.open_uploads), cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with AggregatorHost.start(Path(tmp), config) as host:
            boot_s = time.perf_counter() - start
            say("open rate")
            opened = _open_case(host, devices[: cfg.open_uploads], cfg, host.last_round + 1)
            finish: dict[str, Any] = {}
            round_id = host.last_round + 2
            for defence in cfg.defences:
                say(f"finish: {defence}")
                finish[defence] = _finish_case(host, devices[: cfg.clients], cfg, defence, round_id)
                round_id += 1
    return {
        "benchmark": "enclave",
        "config": asdict(cfg),
        "tee": "simulated (SimEnclave: a separate OS process, no hardware isolation)",
        "enclave_boot_s": boot_s,
        "open": opened,
        "finish": finish,
        "targets_met": opened["met"]
        and all(c["met"] for c in finish.values() if c["met"] is not None),
        "load_average": {"before": load_before, "after": _loadavg()},
        "cpus": os.cpu_count(),
        "blas_threads_env": {k: os.environ.get(k) for k in _THREAD_VARS},
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpu": platform.processor() or platform.machine(),
            "system": platform.platform(),
        },
    }
