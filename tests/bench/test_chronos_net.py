"""``qflare bench chronos-net``: real processes, real sockets, exact sums, delays really applied."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest
from typer.testing import CliRunner

from qflare.bench.chronos_net import NetBenchConfig, run_net_bench
from qflare.bench.netlab import NetLab, netns_available
from qflare.bench.netpeer_io import MSG, frame, read_frame
from qflare.cli.app import app

PROTOCOLS = ("secagg_plus", "chronos", "chronos_dm")


def test_frames_round_trip_and_oversize_frames_are_refused():
    async def go() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(frame(MSG, b"abc") + frame(MSG))
        reader.feed_data((2**31).to_bytes(4, "big") + MSG)
        reader.feed_eof()
        assert await read_frame(reader) == (MSG, b"abc")
        assert await read_frame(reader) == (MSG, b"")
        with pytest.raises(ValueError, match="too large"):
            await read_frame(reader)

    asyncio.run(go())


def test_loopback_peers_give_exact_sums_and_pay_every_round_trip():
    rtt = 0.04
    cfg = NetBenchConfig(
        clients=4, dim=2000, k=3, t=2, rtt_ms=rtt * 1000, scheme="ed25519", repeat=2, netns=False
    )
    report = run_net_bench(cfg)
    assert report["exact_sum"] == dict.fromkeys(PROTOCOLS, True)
    real = report["real"]
    # Each step is one request/response: SecAgg+ has five, CHRONOS one, CHRONOS-DM two.
    for name, steps in (("secagg_plus", 5), ("chronos", 1), ("chronos_dm", 2)):
        assert len(real[name]["active_s"]) == 2
        assert min(real[name]["active_s"]) >= steps * rtt
    assert real["chronos"]["offline_s"] >= 3 * rtt
    assert set(report["reduction_vs_secagg_plus"]["real"]) == {"chronos", "chronos_dm"}


@pytest.mark.skipif(netns_available() is not None, reason=f"{netns_available()}")
def test_namespaced_peers_are_shaped_by_the_kernel_and_cleaned_up():
    dim, up_mbps, rtt = 40_000, 8.0, 0.02
    cfg = NetBenchConfig(
        clients=3,
        dim=dim,
        k=3,
        t=2,
        rtt_ms=rtt * 1000,
        uplink_mbps=up_mbps,
        scheme="ed25519",
        repeat=1,
    )
    report = run_net_bench(cfg)
    assert report["exact_sum"] == dict.fromkeys(PROTOCOLS, True)
    # The masked upload (4 bytes a word) cannot beat the tbf rate (less one burst of 32 KiB).
    floor = (4 * (dim + 1) - 32 * 1024) * 8 / (up_mbps * 1e6)
    assert report["real"]["chronos"]["active_s_median"] >= rtt + 0.9 * floor
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert NetLab(3, 1.0, 1.0).prefix not in names


def test_cli_runs_a_loopback_point():
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "chronos-net",
            "--loopback",
            "--clients",
            "3",
            "--dim",
            "500",
            "--k",
            "3",
            "--t",
            "2",
            "--repeat",
            "1",
            "--scheme",
            "ed25519",
            "--rtt-ms",
            "10",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["benchmark"] == "chronos-net" and all(report["exact_sum"].values())
