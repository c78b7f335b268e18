"""Benchmark reports: the table judges targets from the JSON; the storage sweep is flat in d."""

from __future__ import annotations

import json
from pathlib import Path

from qflare.bench.report import chronos_net_rows, render


def _net(path: Path, chronos: float, dm: float, exact: bool = True) -> None:
    point = {
        "config": {"clients": 20, "dim": 100_000, "uplink_mbps": 20.0, "rtt_ms": 50.0},
        "shaping": "netns + tc tbf per client link",
        "real": {p: {"active_s_median": 0.5} for p in ("secagg_plus", "chronos", "chronos_dm")},
        "model": {p: {"total_s": 0.4} for p in ("secagg_plus", "chronos", "chronos_dm")},
        "reduction_vs_secagg_plus": {
            "real": {"chronos": chronos, "chronos_dm": dm},
            "model": {"chronos": 0.5, "chronos_dm": 0.4},
        },
        "exact_sum": {"secagg_plus": exact, "chronos": True, "chronos_dm": True},
    }
    path.write_text(json.dumps(point))


def test_real_socket_rows_judge_the_targets(tmp_path: Path) -> None:
    _net(tmp_path / "chronos_net_n20_d100k.json", 0.56, 0.47)
    (row,) = chronos_net_rows(tmp_path)
    assert row.endswith("| NOT met |") and "-56.0 %" in row and "(model -50.0 %)" in row
    _net(tmp_path / "chronos_net_n20_d100k.json", 0.85, 0.65)
    assert chronos_net_rows(tmp_path)[0].endswith("| met |")
    _net(tmp_path / "chronos_net_n20_d100k.json", 0.85, 0.65, exact=False)
    assert chronos_net_rows(tmp_path)[0].endswith("| NOT met |")
    assert "CHRONOS over real sockets" in render(tmp_path)


def test_storage_bench_is_flat_in_d_and_judged() -> None:
    from qflare.bench.chronos_storage import run_storage_bench
    from qflare.protocol.chronos import Mode

    report = run_storage_bench(clients=3, dims=(500, 20_000), mode=Mode.CHRONOS, scheme="ed25519")
    secure = [p["secure_storage_bytes"] for p in report["points"]]
    assert secure[0] == secure[1] < 700 and report["flat_in_d"]
    assert all(p["exact_sum"] for p in report["points"]) and report["target"]["met"]
    # the round's masks are held in enclave RAM, never in trusted storage
    assert [p["enclave_ram_precomputed_bytes"] for p in report["points"]] == [4 * 501, 4 * 20_001]


def test_robust_rows_judge_only_rules_with_a_target(tmp_path: Path) -> None:
    from qflare.bench.report import robust_rows

    rule = {"median_s": 0.5, "target_s": 1.0, "met": True}
    data = {
        "config": {"clients": 100, "dim": 1_000_000},
        "defences": {
            "cosine": rule,
            "krum": rule | {"median_s": 12.0, "target_s": 10.0, "met": False},
            "norm-clip": rule | {"target_s": None, "met": None},
        },
    }
    (tmp_path / "robust_n100_d1m.json").write_text(json.dumps(data))
    cosine, krum = robust_rows(tmp_path)
    assert "`cosine`" in cosine and cosine.endswith("| met |") and "0.500 s" in cosine
    assert "`krum`" in krum and krum.endswith("| NOT met |")
