"""``qflare bench chronos-net``: one benchmark point over real sockets, beside the model.

The emulated benchmark (:mod:`qflare.bench.chronos`) measures compute in-process and applies a
stated network model. This one runs the same protocols as separate processes that talk over TCP:
one server and one process per client, each client in its own network namespace with its own
veth link, shaped by the kernel (``tc tbf``: client uplink and downlink rates). The one-way
delay (RTT/2) is added on receipt by the peers, because the kernel here has no ``sch_netem``.
It reports the measured active phases next to the model's prediction for the same point.

Without root or iproute2, ``netns=False`` runs the peers on loopback with the delay only (no
bandwidth shaping): useful to check the harness, not to confirm the bandwidth model.
"""

from __future__ import annotations

import contextlib
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from qflare.bench.chronos import ChronosBenchConfig, emulated_active_phase, resolve_kt
from qflare.bench.netlab import NetLab, netns_available
from qflare.bench.netpeer import PeerPlan

PROTOCOLS = ("secagg_plus", "chronos", "chronos_dm")
_PEER = [sys.executable, "-m", "qflare.bench.netpeer"]
_NOTES = (
    "real: wall time measured by the server process, from sending the round's first messages to "
    "knowing the aggregate; all peers share this machine's cores (the model gives every client "
    "its own device)",
    "delay: added in user space on receipt of each frame (no sch_netem in this kernel), so TCP "
    "itself sees a near-zero RTT: slow start at 50 ms, which would lengthen every protocol's "
    "upload alike, is not reproduced",
    "bandwidth: tc tbf on each client's own veth link (netns mode); none on loopback",
)


@dataclass(frozen=True)
class NetBenchConfig:
    """One point: ``n, d, k, t``, the network, repeats, and whether to use namespaces."""

    clients: int = 20
    dim: int = 100_000
    k: int | None = None
    t: int | None = None
    rtt_ms: float = 50.0
    uplink_mbps: float = 20.0
    downlink_mbps: float = 100.0
    scheme: str = "mldsa65"
    repeat: int = 3
    seed: int = 0
    netns: bool = True
    timeout_s: float = 600.0


def _bench_config(cfg: NetBenchConfig) -> ChronosBenchConfig:
    return ChronosBenchConfig(
        clients=cfg.clients,
        dim=cfg.dim,
        k=cfg.k,
        t=cfg.t,
        rtt_ms=(cfg.rtt_ms,),
        uplink_mbps=cfg.uplink_mbps,
        downlink_mbps=cfg.downlink_mbps,
        scheme=cfg.scheme,
        repeat=cfg.repeat,
        seed=cfg.seed,
        enclave=False,
    )


@contextlib.contextmanager
def _lab(cfg: NetBenchConfig) -> Iterator[NetLab | None]:
    if not cfg.netns:
        yield None
        return
    why = netns_available()
    if why is not None:
        raise RuntimeError(f"network namespaces are not usable here ({why}); use --loopback")
    with NetLab(cfg.clients, cfg.uplink_mbps, cfg.downlink_mbps) as lab:
        yield lab


def _tail(handle: IO[str]) -> str:
    handle.seek(0)
    return handle.read()[-2000:]


def _spawn(
    lab: NetLab | None, ns: str, argv: list[str], stdout: int | IO[str], log: IO[str]
) -> subprocess.Popen[str]:
    """A peer process (this interpreter, our module), inside ``ns`` when there is a lab."""
    cmd = lab.in_ns(ns, argv) if lab else argv
    return subprocess.Popen(cmd, stdout=stdout, stderr=log, text=True)  # noqa: S603


def _collect(
    server: subprocess.Popen[str], clients: list[subprocess.Popen[str]], logs: Sequence[IO[str]]
) -> dict[str, Any]:
    while server.poll() is None:  # a client that fails would leave the server waiting for it
        failed = next((i for i, c in enumerate(clients) if c.poll() not in (None, 0)), None)
        if failed is not None:
            server.kill()
            raise RuntimeError(f"client {failed} failed: {_tail(logs[failed + 1])}")
        time.sleep(0.1)
    out, _ = server.communicate()
    if server.returncode != 0:
        raise RuntimeError(
            f"server exited with {server.returncode} (killed at the timeout?): {_tail(logs[0])}"
        )
    for i, proc in enumerate(clients):
        if proc.wait(timeout=30) != 0:
            raise RuntimeError(f"client {i} failed: {_tail(logs[i + 1])}")
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])["result"]
    return report


def run_peers(plan: PeerPlan, cfg: NetBenchConfig) -> dict[str, Any]:
    """Start the server and the clients (in namespaces if asked) and return the server's report.

    Raises:
        RuntimeError: a peer failed or the run exceeded ``cfg.timeout_s``.
    """
    text = json.dumps(asdict(plan))
    # In a lab the server's namespace holds only the clients' links: listen on all of them.
    host = "0.0.0.0" if cfg.netns else "127.0.0.1"  # noqa: S104
    with _lab(cfg) as lab, tempfile.TemporaryDirectory(prefix="qflare-net-") as tmp:
        logs = [(Path(tmp) / f"peer{i}.log").open("w+") for i in range(plan.clients + 1)]
        server_ns = lab.server_ns if lab else ""
        server = _spawn(
            lab, server_ns, [*_PEER, "server", text, host, "0"], subprocess.PIPE, logs[0]
        )
        clients: list[subprocess.Popen[str]] = []
        timer = threading.Timer(cfg.timeout_s, server.kill)
        timer.start()
        try:
            assert server.stdout is not None
            port = json.loads(server.stdout.readline() or "{}").get("listening")
            if port is None:
                raise RuntimeError(f"server did not start: {_tail(logs[0])}")
            for u in range(plan.clients):
                addr = lab.server_addr(u) if lab else "127.0.0.1"
                argv = [*_PEER, "client", text, str(u), addr, str(port)]
                ns = lab.client_ns(u) if lab else ""
                clients.append(_spawn(lab, ns, argv, subprocess.DEVNULL, logs[u + 1]))
            return _collect(server, clients, logs)
        finally:
            timer.cancel()
            for proc in [server, *clients]:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            for handle in logs:
                handle.close()


def run_net_bench(
    cfg: NetBenchConfig, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Measure the point over real sockets and under the model; return both side by side."""
    say = progress or (lambda _: None)
    bench = _bench_config(cfg)
    k, t = resolve_kt(bench)
    say("model: in-process runs")
    model = emulated_active_phase(bench, progress=say)
    plan = PeerPlan(
        cfg.clients, cfg.dim + 1, k, t, cfg.scheme, cfg.seed, cfg.repeat, cfg.rtt_ms / 2000
    )
    say("real sockets: peers running")
    real = run_peers(plan, cfg)
    real_s = {p: real[p]["active_s_median"] for p in PROTOCOLS}
    model_s = {p: model[p]["total_s"] for p in PROTOCOLS}
    return {
        "benchmark": "chronos-net",
        "config": {**asdict(cfg), "k": k, "t": t, "ring_dim": cfg.dim + 1},
        "machine": {"python": platform.python_version(), "system": platform.platform()},
        "shaping": "netns + tc tbf per client link"
        if cfg.netns
        else "loopback, no bandwidth shaping",
        "real": real,
        "model": model,
        "real_over_model": {p: real_s[p] / model_s[p] for p in PROTOCOLS},
        "reduction_vs_secagg_plus": {
            source: {p: 1.0 - v[p] / v["secagg_plus"] for p in PROTOCOLS[1:]}
            for source, v in (("real", real_s), ("model", model_s))
        },
        "exact_sum": {p: bool(real[p]["exact_sum"]) for p in PROTOCOLS},
        "notes": list(_NOTES),
    }
