"""``qflare bench abuse``: honest nodes finish their rounds while bad requests flood the server.

Everything runs on this machine, over loopback, with the server's default abuse settings:

1. an enrollment authority and a ``qflare server`` process (plain HTTP on 127.0.0.1, SQLite, a
   ``vector:D`` model, cohorts of all N nodes, ``max_rounds = R``);
2. N honest nodes enrolled before the attack, then run in threads of this process (the real
   node stack with its retries, deterministic :class:`~qflare.node.ConstantTrainer` updates);
3. an attacker process on the **same address** (127.0.0.1) sending ``rate`` bad requests per
   second (:mod:`qflare.bench.flood`) from before the nodes open their sessions until the last
   round is over.

The figure is the share of the R rounds that COMPLETED with every honest node among the
survivors. The run is bounded by ``timeout_s``; whatever is unfinished by then counts as failed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from qflare.bench.flood import FloodConfig, flood_summary
from qflare.bench.honest import HonestNodes, count_retries, enroll_nodes
from qflare.bench.server_http import free_port, make_tokens, wait_ready
from qflare.node import NodeState

__all__ = ["AbuseBenchConfig", "run_abuse_bench"]


@dataclass(frozen=True)
class AbuseBenchConfig:
    """One ``bench abuse`` point.

    Attributes:
        nodes: Honest nodes (every round's cohort).
        rounds: Rounds the server runs.
        dim: Model parameters (``vector:D``).
        rate: Bad requests per second from the attacker.
        connections: The attacker's kept-alive connections.
        timeout_s: Bound on the attacked phase.
        target: Share of rounds the honest nodes must complete.
    """

    nodes: int = 5
    rounds: int = 20
    dim: int = 10_000
    rate: float = 2000.0
    connections: int = 32
    timeout_s: float = 300.0
    target: float = 0.95


def _server_config(tmp: Path, cfg: AbuseBenchConfig, port: int, authority_port: int) -> Path:
    config = {
        "database_url": f"sqlite:///{tmp}/server.sqlite",
        "state_dir": str(tmp / "server"),
        "host": "127.0.0.1",
        "port": port,
        "insecure": True,
        "model": f"vector:{cfg.dim}",
        "min_clients": cfg.nodes,
        "max_clients": cfg.nodes,
        "max_rounds": cfg.rounds,
        "round_interval_s": 0.2,
        "step_timeout_s": 20.0,
        "authority_url": f"http://127.0.0.1:{authority_port}",
        "authority_key": str(tmp / "authority" / "authority.pub"),
    }
    path = tmp / "server.json"
    path.write_text(json.dumps(config))
    return path


def _spawn(tmp: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    log = open(tmp / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
    cmd = [sys.executable, "-m", "qflare.cli", *args]
    return subprocess.Popen(cmd, stdout=log, stderr=log)  # noqa: S603 - our own interpreter


def _flood_process(cfg: FloodConfig, stop: Any, out: Any) -> None:
    out.put("started")  # imports done: the schedule starts now
    out.put(flood_summary(cfg, stop.is_set))


def _proc_stats(pid: int) -> dict[str, float]:
    """CPU seconds and peak RSS of a live child (Linux ``/proc``; empty elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    ticks = os.sysconf("SC_CLK_TCK")
    hwm = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")), "0")
    return {
        "cpu_s": round((int(fields[11]) + int(fields[12])) / ticks, 1),
        "peak_rss_mb": round(int(hwm) / 1024, 1),
    }


def _score(rounds: list[dict[str, Any]], cfg: AbuseBenchConfig) -> dict[str, Any]:
    everyone = [
        r
        for r in rounds
        if r["state"] == "COMPLETED" and len(r.get("survivors") or []) == cfg.nodes
    ]
    return {
        "rounds_opened": len(rounds),
        "rounds_completed_by_all": len(everyone),
        "rounds_by_state": {
            s: sum(r["state"] == s for r in rounds) for s in sorted({r["state"] for r in rounds})
        },
        "completed_share": round(len(everyone) / cfg.rounds, 4),
    }


def _attack(base: str, port: int, states: list[NodeState], cfg: AbuseBenchConfig) -> dict[str, Any]:
    """Start the attacker, run the nodes under attack, stop the attacker."""
    spawn = multiprocessing.get_context("spawn")
    stop, out = spawn.Event(), spawn.Queue()
    flood_cfg = FloodConfig(port, cfg.rate, cfg.timeout_s + 30, cfg.connections)
    attacker = spawn.Process(target=_flood_process, args=(flood_cfg, stop, out), daemon=True)
    attacker.start()
    if out.get(timeout=120) != "started":
        raise RuntimeError("the attacker did not start")
    time.sleep(2.0)  # the attacker is at full rate before the nodes open their sessions
    nodes = HonestNodes(base, states, max_rounds=cfg.rounds)
    t0 = time.perf_counter()
    with count_retries() as retries:
        nodes.start()
        finished = nodes.join(cfg.timeout_s)
    seconds = time.perf_counter() - t0
    stop.set()
    flood = out.get(timeout=120)
    attacker.join(30)
    return {
        "seconds": round(seconds, 1),
        "all_nodes_finished": finished,
        "node_rounds_completed": [r.completed if r else None for r in nodes.reports],
        "node_retries": retries.count,
        "node_handshakes": nodes.handshakes,
        "node_errors": nodes.errors[:5],
        "flood": flood,
    }


def run_abuse_bench(cfg: AbuseBenchConfig) -> dict[str, Any]:
    """Run one point (see the module docstring) and return its JSON-ready result."""
    with tempfile.TemporaryDirectory(prefix="qflare-abuse-") as name:
        tmp = Path(name)
        tokens = make_tokens(tmp / "authority", cfg.nodes)
        port, authority_port = free_port(), free_port()
        config = _server_config(tmp, cfg, port, authority_port)
        authority = _spawn(
            tmp, "authority", "authority", "serve", "--dir", str(tmp / "authority"),
            "--port", str(authority_port),
        )  # fmt: skip
        server = _spawn(tmp, "server", "server", "--config", str(config), "--log-level", "warning")
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(f"http://127.0.0.1:{authority_port}", authority)
            wait_ready(base, server)
            states = enroll_nodes(base, tokens, tmp / "nodes")
            attack = _attack(base, port, states, cfg)
            rounds = httpx.get(f"{base}/v1/rounds", timeout=30).json()
            stats = _proc_stats(server.pid)
        finally:
            for child in (server, authority):
                child.terminate()
                child.wait(timeout=30)
    score = _score(rounds, cfg)
    return {
        "benchmark": "abuse",
        "machine": f"{platform.platform()}, {os.cpu_count()} cpus",
        "config": asdict(cfg),
        "server": {"settings": "defaults (rate_per_ip 500/s, rate_per_device 50/s)", **stats},
        **score,
        **attack,
        "target_met": score["completed_share"] >= cfg.target,
    }
