"""The network model, the emulating transport, the benchmark and its CLI command."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from qflare.bench.chronos import (
    ChronosBenchConfig,
    dropped_clients,
    run_chronos_bench,
    uplink_needed,
)
from qflare.bench.chronos_runs import ProtocolRun
from qflare.bench.netmodel import ClientLeg, EmulatedTransport, NetworkModel, Step, replay_all
from qflare.cli.app import app

MODEL = NetworkModel(rtt_s=0.1, uplink_mbps=8.0, downlink_mbps=80.0)


def test_a_step_waits_for_the_slowest_concurrent_client_then_the_server():
    step = Step(
        "s",
        {
            0: ClientLeg(download_bytes=10_000_000, compute_s=0.5, upload_bytes=1_000_000),
            1: ClientLeg(download_bytes=0, compute_s=2.0, upload_bytes=0),
        },
        server_s=0.25,
    )
    timing = EmulatedTransport(MODEL).step(step)
    # client 0: 1 s down + 0.5 s + 1 s up = 2.5 s; client 1: 2 s. Plus one RTT and the server.
    assert timing.critical_client == 0
    assert timing.duration_s == pytest.approx(2.5 + 0.1 + 0.25)
    assert timing.transfer_s == pytest.approx(2.0) and timing.client_compute_s == 0.5
    idle = EmulatedTransport(MODEL).step(Step("none", {}, 0.3))
    assert idle.duration_s == 0.3 and idle.critical_client is None


def test_replay_adds_steps_and_the_opening_server_work():
    steps = [Step(f"s{i}", {0: ClientLeg(0, 0.01, 0)}, 0.02) for i in range(3)]
    fast, slow = replay_all(steps, [MODEL, NetworkModel(rtt_s=0.3)], lead_server_s=0.5)
    assert fast.total_s == pytest.approx(0.5 + 3 * (0.1 + 0.01 + 0.02))
    assert slow.total_s - fast.total_s == pytest.approx(3 * 0.2)
    assert fast.totals()["propagation_s"] == pytest.approx(0.3)
    with pytest.raises(ValueError):
        NetworkModel(rtt_s=0.05, uplink_mbps=0)


def test_dropped_clients_are_spread_and_counted():
    assert dropped_clients(20, 0.1) == {0, 10}
    assert dropped_clients(20, 0.0) == set()
    assert len(dropped_clients(7, 0.3)) == 2


def test_small_benchmark_is_exact_and_reports_every_figure():
    cfg = ChronosBenchConfig(
        clients=6, dim=500, k=5, t=3, dropout=0.2, rtt_ms=(100.0,), scheme="ed25519", repeat=1
    )
    report = run_chronos_bench(cfg)
    assert report["exact_sum"] == {"secagg_plus": True, "chronos": True, "chronos_dm": True}
    assert report["survivors"] == {"secagg_plus": 5, "chronos": 5, "chronos_dm": 5}
    at = report["active_phase"]["rtt_100ms"]
    assert at["chronos_s"] < at["secagg_plus_s"] and at["chronos_dm_s"] < at["secagg_plus_s"]
    # 6 steps: the sparse graph (k=5 < n=6) adds the seed exchange to the 5 SecAgg steps
    assert at["breakdown"]["secagg_plus"]["propagation_s"] == pytest.approx(0.6)
    assert at["breakdown"]["chronos"]["propagation_s"] == pytest.approx(0.2)  # dropout: 2 steps
    steady = report["steady_state_round"]["rtt_100ms"]
    assert steady["chronos_s"] < steady["chronos_dm_s"]  # the dropout is out: one step again
    assert report["offline"]["per_device"]["chronos_dm"]["client_messages"] == 4  # + seed reveal
    for device in report["enclave_device"].values():
        assert device["exact_sum"] and device["secure_storage_bytes"] < 700
        assert device["enclave_ram_precomputed_bytes"] == 4 * 501
    assert set(report["online_client"]["device_mask_vs_add"]) == {"warm", "cold"}
    assert "online_mask_over_numpy_add" in report["targets"]


def test_cli_bench_chronos_json_and_bad_rtt():
    runner = CliRunner()
    args = ["bench", "chronos", "--clients", "5", "--dim", "300", "--k", "5", "--t", "3"]
    args += ["--rtt-ms", "20,80", "--scheme", "ed25519", "--repeat", "1", "--no-enclave", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data["active_phase"]) == {"rtt_20ms", "rtt_80ms"}
    assert data["config"]["uplink_mbps"] == 20.0 and "enclave_device" not in data
    bad = runner.invoke(app, ["bench", "chronos", "--rtt-ms", "fast"])
    assert bad.exit_code != 0


def test_uplink_needed_solves_for_the_reduction_target():
    def run(steps: int) -> ProtocolRun:
        legs = {0: ClientLeg(0, 0.0, 0)}
        body = [Step(f"s{i}", legs, 0.0) for i in range(steps - 1)]
        return ProtocolRun(
            [*body, Step("up", {0: ClientLeg(0, 0.0, 1_000_000)}, 0.0)], 0.0, True, 1
        )

    runs = {"secagg_plus": [run(5)], "chronos": [run(1)]}
    model = NetworkModel(rtt_s=0.05)
    # 0.05 + 8/b <= 0.5 * (0.25 + 8/b)  <=>  b >= 160/3 Mbit/s
    assert uplink_needed(runs, "chronos", model, 0.5) == pytest.approx(160 / 3, rel=1e-3)
    assert uplink_needed(runs, "chronos", model, 0.85) is None  # 1 RTT vs 5 caps it at 80 %
