"""Measured runs behind ``qflare bench chronos``: SecAgg+, CHRONOS epochs, one enclave device.

Each run returns the protocol steps of the active phase as :class:`~qflare.bench.netmodel.Step`
(real compute and real encoded sizes) so that the same measurements can be replayed under
several network models.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qflare.bench.netmodel import ClientLeg, Step
from qflare.crypto import RingVector, SignatureScheme
from qflare.protocol import messages as sm
from qflare.protocol.chronos import ChronosKeystore, EpochConfig, Mode, State
from qflare.protocol.chronos import messages as cm
from qflare.protocol.identity import EndorsedKey
from qflare.protocol.secagg import ROUNDS
from qflare.protocol.secagg import State as SecAggState
from qflare.sim.chronos_cohort import ChronosCohort, PhaseLog, software_keystores
from qflare.sim.cohort import Cohort, expected_sum
from qflare.sim.identities import SimAuthority
from qflare.tee import storage_report
from qflare.tee.chronos_host import EnclaveKeystore

InputFn = Callable[[int], RingVector]
_OPENS = {
    sm.SeedCommitments: SecAggState.R0_REVEAL_SEED,
    sm.KeyDirectory: SecAggState.R1_SHARE_KEYS,
    sm.ShareRelay: SecAggState.R2_MASKED_INPUT,
    sm.ConsistencyRequest: SecAggState.R3_CONSISTENCY,
    sm.UnmaskRequest: SecAggState.R4_UNMASK,
}


class TimedKeystore:
    """A :class:`ChronosKeystore` proxy that times the online ``mask`` call."""

    def __init__(self, inner: ChronosKeystore) -> None:
        self.inner = inner
        self.mask_seconds: dict[int, float] = {}

    @property
    def client_id(self) -> int:
        """Forwarded."""
        return self.inner.client_id

    @property
    def identity_public_key(self) -> bytes:
        """Forwarded."""
        return self.inner.identity_public_key

    def last_round(self) -> int:
        """Forwarded."""
        return self.inner.last_round()

    @property
    def rejected(self) -> dict[int, str]:
        """Forwarded."""
        return self.inner.rejected

    def begin_epoch(
        self, config: EpochConfig, directory: Mapping[int, EndorsedKey]
    ) -> cm.EpochKeys:
        """Forwarded."""
        return self.inner.begin_epoch(config, directory)

    def reveal_seed(self, msg: cm.SeedCommitments) -> cm.EpochSeedReveal:
        """Forwarded."""
        return self.inner.reveal_seed(msg)

    def share_keys(self, directory: cm.KeyDirectory) -> cm.EpochShares:
        """Forwarded."""
        return self.inner.share_keys(directory)

    def accept_shares(self, relay: cm.ShareRelay) -> cm.EpochReady:
        """Forwarded."""
        return self.inner.accept_shares(relay)

    def precompute(self, round_id: int) -> None:
        """Forwarded."""
        self.inner.precompute(round_id)

    def mask(self, round_id: int, vector: RingVector) -> RingVector:
        """Forwarded and timed."""
        t0 = time.perf_counter()
        out = self.inner.mask(round_id, vector)
        self.mask_seconds[round_id] = time.perf_counter() - t0
        return out

    def release(self, request: cm.UnmaskRequest) -> cm.UnmaskShares:
        """Forwarded."""
        return self.inner.release(request)


def make_inputs(dim: int) -> InputFn:
    """Deterministic client updates (fresh arrays: clients mask them in place)."""
    base = np.random.default_rng(7).integers(0, 2**31, dim, dtype=np.int64).astype(np.uint32)

    def make(u: int) -> RingVector:
        out: RingVector = base + np.uint32(u)
        return out

    return make


def _exact(total: RingVector | None, survivors: tuple[int, ...], inputs: InputFn, dim: int) -> bool:
    return total is not None and bool(
        np.array_equal(total, expected_sum(inputs, survivors, dim, 32))
    )


@dataclass
class ProtocolRun:
    """One measured active phase.

    Attributes:
        steps: The phase's steps (replayable under any network model).
        lead_server_s: Server compute before the first step (opening the round).
        exact: Whether the aggregate equals the plain sum of the survivors' inputs.
        survivors: How many inputs the aggregate holds.
        mask_seconds: CHRONOS only: each client's ``mask`` call (precomputed masks).
        extra: Further figures (offline cost, storage ...).
    """

    steps: list[Step]
    lead_server_s: float
    exact: bool
    survivors: int
    mask_seconds: list[float] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)


def run_secagg_plus(
    rc: sm.RoundConfig, dropouts: set[int], seed: int, inputs: InputFn
) -> ProtocolRun:
    """One synchronous SecAgg+ round of the engine; dropouts go silent at the masked input."""
    down: dict[SecAggState, dict[int, int]] = {s: {} for s in ROUNDS}
    start = len(sm.encode(rc))

    def hook(u: int, msg: sm.ServerMessage) -> sm.ServerMessage:
        down[_OPENS[type(msg)]][u] = len(sm.encode(msg))
        return msg

    drops = dict.fromkeys(dropouts, SecAggState.R2_MASKED_INPUT)
    res = Cohort(rc, seed=seed, dropouts=drops, server_hook=hook).run(inputs)
    steps = []
    for state in ROUNDS:
        legs = {
            u: ClientLeg(
                start if state is SecAggState.R0_ADVERTISE_KEYS else down[state].get(u, 0),
                sec,
                res.upload_bytes[state].get(u, 0),
            )
            for u, sec in res.client_seconds.get(state, {}).items()
        }
        if not legs and state not in res.server_seconds:
            continue  # the seed step of a sparse graph (absent for the complete graph)
        steps.append(Step(state.value, legs, res.server_seconds.get(state, 0.0)))
    return ProtocolRun(
        steps, 0.0, _exact(res.total, res.survivors, inputs, rc.dim), len(res.survivors)
    )


def phase_steps(log: PhaseLog) -> list[Step]:
    """A cohort phase log as replayable steps."""
    return [
        Step(
            s.state.value,
            {
                u: ClientLeg(s.download_bytes.get(u, 0), sec, s.upload_bytes.get(u, 0))
                for u, sec in s.client_seconds.items()
            },
            s.server_seconds,
        )
        for s in log.steps
    ]


def _offline_figures(log: PhaseLog, idle: Mapping[int, float]) -> dict[str, object]:
    per_client = log.per_client_seconds()
    sizes = log.per_client_bytes()
    return {
        "client_compute_s_mean": statistics.fmean(per_client.values()),
        "client_compute_s_max": max(per_client.values()),
        "upload_bytes_mean": statistics.fmean(up for _, up in sizes.values()),
        "download_bytes_mean": statistics.fmean(down for down, _ in sizes.values()),
        "client_messages": len(log.steps),
        "server_compute_s": log.server_seconds(),
        "idle_precompute_s_mean": statistics.fmean(idle.values()) if idle else 0.0,
    }


def run_chronos(
    cfg: EpochConfig, dropouts: set[int], seed: int, inputs: InputFn
) -> tuple[ProtocolRun, ProtocolRun, list[Step]]:
    """One epoch: offline phase, then round 1 (fresh dropouts) and round 2 (they stay out).

    Returns:
        The two rounds' runs and the offline phase's steps.
    """
    soft = software_keystores(cfg, seed=seed)
    stores = {u: TimedKeystore(ks) for u, ks in soft.items()}
    co = ChronosCohort(cfg, stores)
    offline = co.run_offline()
    runs: list[ProtocolRun] = []
    for round_id, drops in zip(cfg.round_ids, (dropouts, set()), strict=True):
        idle = co.idle()
        log = co.run_round(round_id, inputs, dict.fromkeys(drops, State.ON_MASKED_INPUT))
        result = log.result
        survivors = result.survivors if result is not None else ()
        run = ProtocolRun(
            phase_steps(log),
            log.open_seconds,
            result is not None and _exact(result.total, survivors, inputs, cfg.dim),
            len(survivors),
            [s.mask_seconds[round_id] for s in stores.values() if round_id in s.mask_seconds],
            {"unmask_step": bool(result and result.unmask_step)},
        )
        if not runs:
            run.extra["offline"] = _offline_figures(offline, idle)
            run.extra["keystore_state_bytes"] = len(soft[0].export_state())
        runs.append(run)
    return runs[0], runs[1], phase_steps(offline)


def enclave_device(cfg: EpochConfig, seed: int, inputs: InputFn) -> dict[str, object]:
    """Client 0 on the simulated enclave (the rest in software): its costs and its storage."""
    with tempfile.TemporaryDirectory(prefix="qflare-chronos-") as tmp:
        scheme = SignatureScheme(cfg.signature_scheme)
        device = EnclaveKeystore.start(
            Path(tmp), 0, scheme=scheme, authority=SimAuthority.default().key
        )
        try:
            soft = software_keystores(cfg, seed=seed)
            timed = TimedKeystore(device)
            stores: dict[int, ChronosKeystore] = {**soft, 0: timed}
            co = ChronosCohort(cfg, stores)
            offline = co.run_offline()
            t0 = time.perf_counter()
            co.clients[0].precompute_next()
            precompute_s = time.perf_counter() - t0
            precomputed = device.status().precomputed_bytes
            log = co.run_round(cfg.first_round, inputs)
            ok = log.result is not None and _exact(
                log.result.total, log.result.survivors, inputs, cfg.dim
            )
            report = storage_report(Path(tmp), {"chronos-state": device.sealed_state})
        finally:
            device.close()
    return {
        "exact_sum": ok,
        "offline_compute_s": offline.per_client_seconds()[0],
        "idle_precompute_s": precompute_s,
        "online_mask_s": timed.mask_seconds.get(cfg.first_round, float("nan")),
        "online_note": "includes the simulated channel: the update goes in and the masked vector "
        "comes out through a socket (zero-copy shared memory on a real TrustZone device)",
        "enclave_ram_precomputed_bytes": precomputed,
        "secure_storage_bytes": report.secure_total,
        "secure_storage_files": dict(report.secure),
        "sealed_state_bytes": report.host.get("sealed:chronos-state", 0),
    }


def chronos_config(
    mode: Mode, n: int, k: int, t: int, dim: int, scheme: str, epoch: int, rounds: int = 2
) -> EpochConfig:
    """The epoch of one benchmark repeat (default two rounds: fresh dropouts, then steady)."""
    return EpochConfig(
        session="bench",
        epoch=epoch,
        mode=mode,
        participants=tuple(range(n)),
        k=k,
        t=t,
        dim=dim,
        signature_scheme=scheme,
        first_round=1,
        rounds=rounds,
    )


_FLUSH_WORDS = 16 * 1024 * 1024  # 64 MiB of uint32: larger than the last-level cache


def online_mask_cost(dim: int, *, samples: int = 25, seed: int = 0) -> dict[str, dict[str, float]]:
    """One device: ``mask`` with a precomputed round against one numpy add, same cache state.

    ``warm``: operands were just written (the device precomputed, then produced its update).
    ``cold``: a 64 MiB sweep evicts the caches before each timed call (e.g. training ran in
    between). Both the mask call and the reference addition are measured in the same regime.
    """
    cfg = EpochConfig(
        session="bench-mask",
        epoch=1,
        mode=Mode.CHRONOS,
        participants=(0, 1, 2),
        k=3,
        t=2,
        dim=dim,
        signature_scheme="ed25519",
        first_round=1,
        rounds=2 * samples,
    )
    stores = software_keystores(cfg, seed=seed)
    ChronosCohort(cfg, stores).run_offline()
    store, inputs, sweep = stores[0], make_inputs(dim), np.ones(_FLUSH_WORDS, dtype=np.uint32)
    out: dict[str, dict[str, float]] = {}
    for regime in ("warm", "cold"):
        masks, adds = [], []
        for _ in range(samples):
            round_id = store.last_round() + 1
            store.precompute(round_id)
            x = inputs(0)
            if regime == "cold":
                sweep.sum()
            t0 = time.perf_counter()
            store.mask(round_id, x)
            masks.append(time.perf_counter() - t0)
            a, b = inputs(1), inputs(2)
            if regime == "cold":
                sweep.sum()
            t0 = time.perf_counter()
            np.add(a, b, out=a)
            adds.append(time.perf_counter() - t0)
        mask_s, add_s = statistics.median(masks), statistics.median(adds)
        out[regime] = {"mask_s": mask_s, "numpy_add_s": add_s, "ratio": mask_s / add_s}
    return out
