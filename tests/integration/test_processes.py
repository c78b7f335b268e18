"""Real processes, real TLS over loopback: ``qflare server`` and ``qflare node run`` children."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from qflare.cli.federation import LocalFederation
from qflare.node.trainer import ConstantTrainer
from qflare.protocol.quantize import QuantConfig, dequantize

DIM = 2_000
SETTINGS = {
    "model": f"vector:{DIM}",
    "step_timeout_s": 8,
    "round_interval_s": 0.3,
    "k": 5,
    "t": 3,
    "signature_scheme": "mldsa65",
    "max_total_weight": 1000,
}


def _result(fed: LocalFederation, round_id: int) -> np.ndarray:
    with sqlite3.connect(fed.workdir / "server" / "qflare.sqlite", timeout=60) as db:
        (blob,) = db.execute("SELECT result FROM rounds WHERE id = ?", (round_id,)).fetchone()
    return np.frombuffer(blob, dtype=np.uint32).copy()


def _devices(fed: LocalFederation, round_id: int) -> int:
    with sqlite3.connect(fed.workdir / "server" / "qflare.sqlite", timeout=60) as db:
        (count,) = db.execute(
            "SELECT count(*) FROM round_events WHERE round_id = ? AND kind = 'masked'", (round_id,)
        ).fetchone()
    return int(count)


def _participants(fed: LocalFederation, round_id: int, nodes: int) -> list[int]:
    """Indices of the nodes the server sampled for ``round_id``."""
    with sqlite3.connect(fed.workdir / "server" / "qflare.sqlite", timeout=60) as db:
        (devices,) = db.execute("SELECT devices FROM rounds WHERE id = ?", (round_id,)).fetchone()
    node_of = {
        json.loads((fed.workdir / f"node{i}" / "device.json").read_text())["device_id"]: i
        for i in range(nodes)
    }
    return sorted(node_of[str(d)] for d in json.loads(devices).values())


def _check_sum(fed: LocalFederation, round_id: int, seeds: list[int]) -> None:
    quant = QuantConfig(1.0, 32, SETTINGS["max_total_weight"])
    total, weight = dequantize(_result(fed, round_id), quant)
    expected = sum(ConstantTrainer(s).delta(DIM, round_id).astype(np.float64) * 10 for s in seeds)
    assert weight == 10 * len(seeds)
    assert np.max(np.abs(total - expected)) <= weight / quant.scale


def test_six_nodes_three_rounds_over_tls_one_node_killed(tmp_path: Path) -> None:
    fed = LocalFederation(
        tmp_path, {**SETTINGS, "min_clients": 5, "max_clients": 6, "max_rounds": 3}
    )
    fed.prepare()
    with fed:
        fed.start_server()
        fed.enroll_all(range(6))
        for i in range(6):
            fed.start_node(i, "--trainer", f"constant:{i}", "--max-rounds", "3", "--poll-wait", "2")
        # SIGKILL node 5 in the middle of round 2, right after it advertised its keys
        _pause_after(fed, 5, 0, timeout_s=180, round_id=2, sig=signal.SIGKILL)
        done = fed.wait_rounds(3, 180)
    assert [r["id"] for r in done][:3] == [1, 2, 3]
    # A round opens once min_clients (5) nodes poll, so round 1 may start before the sixth.
    first = _participants(fed, 1, 6)
    assert len(first) >= 5
    _check_sum(fed, 1, first)
    assert 5 in _participants(fed, 2, 6)
    for round_id in (2, 3):  # node 5 was in round 2 but never sent its input, then it was gone
        _check_sum(fed, round_id, [i for i in _participants(fed, round_id, 6) if i != 5])


def _delivered(text: str, round_id: int, step: int) -> bool:
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if (entry.get("msg"), entry.get("round"), entry.get("step")) == (
            "answer delivered",
            round_id,
            step,
        ):
            return True
    return False


def _pause_after(
    fed: LocalFederation,
    node: int,
    step: int,
    timeout_s: float = 60,
    round_id: int = 1,
    sig: int = signal.SIGSTOP,
) -> None:
    """Send ``sig`` to ``node`` once its log shows the server accepted its ``step`` answer.

    Waiting for the delivery (not for the answer being computed) keeps the signal from landing
    between computing and sending, which would freeze the node one step earlier than meant.
    """
    log = fed.workdir / f"node{node}.log"
    end = time.time() + timeout_s
    while time.time() < end:
        if log.exists() and _delivered(log.read_text(), round_id, step):
            fed.nodes[node].send_signal(sig)
            return
        time.sleep(0.002)
    raise TimeoutError(f"node {node} never answered step {step} of round {round_id}")


def _settle(fed: LocalFederation, step: int, timeout_s: float = 30) -> None:
    """Wait until the three running nodes have answered step ``step + 1`` (or a short while)."""
    if step != 1:
        time.sleep(1.0)
        return
    end = time.time() + timeout_s
    while time.time() < end and _devices(fed, 1) < 3:
        time.sleep(0.05)


def _run_one_round(workdir: Path, pause_after_step: int | None) -> tuple[str, int]:
    """One round of 4 seeded nodes; optionally freeze node 3, SIGKILL and restart the server."""
    settings = {
        **SETTINGS,
        "min_clients": 4,
        "max_clients": 4,
        "max_rounds": 1,
        "step_timeout_s": 60,
    }
    fed = LocalFederation(workdir, settings)
    fed.prepare()
    masked_before_crash = -1
    with fed:
        fed.start_server()
        fed.enroll_all(range(4))
        for i in range(4):
            args = ("--trainer", f"constant:{10 + i}", "--max-rounds", "1", "--poll-wait", "1")
            fed.start_node(i, *args, "--seed", str(i))
        if pause_after_step is not None:
            _pause_after(fed, 3, pause_after_step)
            _settle(fed, pause_after_step)  # the others answer the next step; node 3 is frozen
            masked_before_crash = _devices(fed, 1)
            fed.kill_server()
            fed.start_server()  # same database, same port: the round resumes from its log
            fed.nodes[3].send_signal(signal.SIGCONT)
        (row,) = fed.wait_rounds(1, 180)
    _check_sum(fed, 1, [10, 11, 12, 13])
    return str(row["result_sha256"]), masked_before_crash


@pytest.fixture(scope="module")
def clean_result(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The result of the same round without a crash (run once for every crash point)."""
    clean, _ = _run_one_round(tmp_path_factory.mktemp("clean"), None)
    return clean


@pytest.mark.parametrize("pause_after_step", [0, 1, 3])
def test_server_sigkilled_mid_round_resumes_to_the_same_result(
    tmp_path: Path, pause_after_step: int, clean_result: str
) -> None:
    crashed, masked = _run_one_round(tmp_path / "crash", pause_after_step)
    assert crashed == clean_result
    if pause_after_step == 1:
        assert masked == 3  # the crash hit R2 with three masked inputs accepted and persisted
