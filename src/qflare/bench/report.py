"""Render benchmark JSON files as the markdown tables of docs/benchmarks.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def secagg_rows(bench_dir: Path) -> list[str]:
    """Markdown rows for the SecAgg targets (one per JSON file that exists)."""
    points = [
        (
            "server_n100_after_masked.json",
            "Server, n=100, d=100k, 30 % drop after masked input, k=31, t=16 (policy: 0 corrupt)",
            "server_compute_s",
            0.3,
        ),
        (
            "server_n100_after_masked_finder.json",
            "Server, same drop, finder's k=69, t=38 (default client policy: 5 % corrupt)",
            "server_compute_s",
            0.3,
        ),
        (
            "server_n100_before_masked.json",
            "Server, same, 30 % drop before masked input (masks regenerated), t=16",
            "server_compute_s",
            0.3,
        ),
        (
            "server_n100_before_masked_finder.json",
            "Server, drop before masked input, finder's k=69, t=38 (default policy)",
            "server_compute_s",
            0.3,
        ),
        (
            "client_n20_d1m.json",
            "Client per round, n=20, d=1M, k=11, t=6",
            "client_compute_mean_s",
            0.04,
        ),
        (
            "client_n20_d1m_t7.json",
            "Client per round, n=20, d=1M, k=11, t=7",
            "client_compute_mean_s",
            0.04,
        ),
        (
            "round_n100_k15.json",
            "Whole round in-process, n=100, d=100k, k=15, t=8 (all parties, signatures)",
            "round_wall_in_process_s",
            2.0,
        ),
        (
            "round_n100_k15_t11.json",
            "Whole round in-process, same, t=11",
            "round_wall_in_process_s",
            2.0,
        ),
        ("n1000.json", "n=1000, d=100k, 10 % drop, finder's k: server", "server_compute_s", 5.0),
        ("n1000.json", "n=1000, same: mean client compute", "client_compute_mean_s", 0.1),
    ]
    rows = []
    for name, label, key, target in points:
        data = _load(bench_dir / name)
        if data is None:
            continue
        value = float(data[key])
        ok = "met" if value <= target and data["exact_sum"] else "NOT met"
        rows.append(f"| {label} | {value:.3f} s | ≤ {target} s | {ok} |")
    return rows


def _pct(x: float) -> str:
    return f"{-100 * x:+.1f} %"


def chronos_rows(bench_dir: Path) -> list[str]:
    """Markdown rows for the CHRONOS latency targets at RTT 50 ms (one per JSON file)."""
    rows = []
    for name, label in [
        ("chronos_n20_d100k.json", "d=100k, no dropouts, 20 Mbit/s up"),
        ("chronos_n20_d100k_drop10.json", "d=100k, 10 % dropouts, 20 Mbit/s up"),
        ("chronos_n20_d1m.json", "d=1M, no dropouts, 20 Mbit/s up"),
        ("chronos_n20_d1m_drop10.json", "d=1M, 10 % dropouts, 20 Mbit/s up"),
        ("chronos_n20_d100k_1gbit.json", "d=100k, no dropouts, 1 Gbit/s up"),
        ("chronos_n20_d100k_1gbit_drop10.json", "d=100k, 10 % dropouts, 1 Gbit/s up"),
    ]:
        data = _load(bench_dir / name)
        if data is None:
            continue
        a = data["active_phase"]["rtt_50ms"]
        drop = data["config"].get("dropout", 0) > 0
        target = 0.6 if drop else 0.8
        ok = (
            "met"
            if a["chronos_reduction"] >= target and a["chronos_dm_reduction"] >= 0.6
            else "NOT met"
        )
        rows.append(
            f"| CHRONOS active phase vs SecAgg+, n=20, {label}, RTT 50 ms | SecAgg+ {a['secagg_plus_s']:.3f} s; chronos {_pct(a['chronos_reduction'])}; chronos-dm {_pct(a['chronos_dm_reduction'])} | chronos ≤ {-100 * target:.0f} %, -dm ≤ -60 % | {ok} |"
        )
    data = _load(bench_dir / "chronos_n20_d100k.json")
    if data is not None:
        r = data["online_client"]["mask_over_numpy_add"]
        rows.append(
            f"| CHRONOS online client mask with precomputed masks vs one numpy add (d=100k, worst of warm/cold) | {r:.2f}x | ≤ 1.5x | {'met' if r <= 1.5 else 'NOT met'} |"
        )
    sweep = _load(bench_dir / "chronos_storage_n20.json")
    if sweep is not None:
        dims = sweep["config"]["dims"]
        sealed = [p["sealed_state_bytes"] for p in sweep["points"]]
        rows.append(
            f"| CHRONOS trusted storage per device (simulated enclave), n={sweep['config']['clients']}, d = {min(dims):,} … {max(dims):,} | {sweep['secure_storage_bytes_max']} B at every d (flat: {sweep['flat_in_d']}); host-held sealed state {min(sealed):,} to {max(sealed):,} B | < 700 B, flat in d | {'met' if sweep['target']['met'] else 'NOT met'} |"
        )
    return rows


def chronos_net_rows(bench_dir: Path) -> list[str]:
    """Markdown rows for the real-socket confirmation points (``qflare bench chronos-net``)."""
    rows = []
    for name in ("chronos_net_n20_d100k.json", "chronos_net_n20_d100k_1gbit.json"):
        data = _load(bench_dir / name)
        if data is None:
            continue
        cfg, real, model = data["config"], data["real"], data["model"]
        red, mred = (
            data["reduction_vs_secagg_plus"]["real"],
            data["reduction_vs_secagg_plus"]["model"],
        )
        ok = red["chronos"] >= 0.8 and red["chronos_dm"] >= 0.6 and all(data["exact_sum"].values())
        link = f"{cfg['uplink_mbps']:g} Mbit/s up"
        rows.append(
            f"| CHRONOS over real sockets ({data['shaping']}), n={cfg['clients']}, d={cfg['dim']:,}, {link}, RTT {cfg['rtt_ms']:g} ms | SecAgg+ {real['secagg_plus']['active_s_median']:.3f} s (model {model['secagg_plus']['total_s']:.3f}); chronos {_pct(red['chronos'])} (model {_pct(mred['chronos'])}); chronos-dm {_pct(red['chronos_dm'])} (model {_pct(mred['chronos_dm'])}) | chronos ≤ -80 %, -dm ≤ -60 % | {'met' if ok else 'NOT met'} |"
        )
    return rows


def server_rows(bench_dir: Path) -> list[str]:
    """Markdown rows for the server targets."""
    data = _load(bench_dir / "server.json")
    if data is None:
        return []
    hs, up = data["handshakes"]["handshakes_per_s"], data["uploads"]["uploads_per_s"]
    rows = [
        f"| Server session handshakes (ML-DSA-65 + ML-KEM-768/X25519, server side) | {hs:.0f} /s | ≥ 500 /s | {'met' if hs >= 500 else 'NOT met'} |",
        f"| Signed 400 kB masked uploads opened, verified, summed, persisted (server side) | {up:.0f} /s | ≥ 200 /s | {'met' if up >= 200 else 'NOT met'} |",
    ]
    cr = data.get("concurrent_round")
    if cr:
        ok = cr["errors"] == 0 and cr["finished"] == cr["nodes"]
        rows.append(
            f"| {cr['nodes']} concurrent nodes, one SecAgg+ round, d={cr['dim']:,}, loopback HTTP | {cr['finished']} finished, {cr['errors']} errors, {cr['seconds']:.0f} s | 0 errors | {'met' if ok else 'NOT met'} |"
        )
    return rows


def startup_rows(bench_dir: Path) -> list[str]:
    """The CLI start-up row (``qflare bench startup``)."""
    data = _load(bench_dir / "cli_startup.json")
    if data is None:
        return []
    cases, load = data["cases"], data["load_average"]["before"][0]
    return [
        f"| CLI start-up, fresh process: `qflare --help` / `--version` (load {load:.1f} on {data['cpus']} cores) | {cases['--help']['median_s']:.2f} s / {cases['--version']['median_s']:.2f} s | < 1 s | {'met' if data['met'] else 'NOT met'} |"
    ]


def abuse_rows(bench_dir: Path) -> list[str]:
    """Markdown row for honest rounds under a bad-request flood (``qflare bench abuse``)."""
    data = _load(bench_dir / "abuse.json")
    if data is None:
        return []
    cfg, flood = data["config"], data["flood"]
    share = data["completed_share"]
    return [
        f"| Honest nodes' rounds while {cfg['rate']:,.0f} bad requests/s arrive from their own address ({cfg['nodes']} nodes, {cfg['rounds']} rounds, loopback; sent {flood['sent_per_s']:,.0f}/s, server answered {flood['answered_per_s']:,.0f}/s) | {100 * share:.0f} % completed by all | ≥ {100 * cfg['target']:.0f} % | {'met' if data['target_met'] else 'NOT met'} |"
    ]


def robust_rows(bench_dir: Path) -> list[str]:
    """Rows for the robust aggregation rules with a target (``qflare bench robust``)."""
    data = _load(bench_dir / "robust_n100_d1m.json")
    if data is None:
        return []
    cfg, rows = data["config"], []
    for name, rule in data["defences"].items():
        if rule["target_s"] is None:
            continue
        ok = "met" if rule["met"] else "NOT met"
        rows.append(
            f"| Robust aggregation `{name}`, n={cfg['clients']}, d={cfg['dim']:,} float32 (outside the enclave) | {rule['median_s']:.3f} s | ≤ {rule['target_s']:g} s | {ok} |"
        )
    return rows


def render(bench_dir: Path) -> str:
    """The generated section of docs/benchmarks.md."""
    lines = [
        "| Work | Measured (median) | Target | |",
        "|---|---|---|---|",
        *secagg_rows(bench_dir),
    ]
    client = _load(bench_dir / "client_n20_d1m.json")
    if client is not None:
        r = client["ratios"]["client_r2_over_keystream_floor"]
        lines.append(
            f"| Client masking (R2), n=20, d=1M, vs AES-CTR keystream floor of its 11 masks | {r:.2f}x | ≤ 2x | {'met' if r <= 2 else 'NOT met'} |"
        )
        up = client["ratios"]["upload_over_float32"]
        lines.append(
            f"| Upload bytes vs float32 update | {up:.4f}x | ≤ 1.02x | {'met' if up <= 1.02 else 'NOT met'} |"
        )
    big = _load(bench_dir / "n1000.json")
    if big is not None:
        rss = big["peak_rss_mb"]
        lines.append(
            f"| n=1000 peak RSS (whole process: 1000 clients + server) | {rss:.0f} MB | ≤ 1024 MB | {'met' if rss <= 1024 else 'NOT met'} |"
        )
    acc = _load(bench_dir / "accuracy.json")
    if acc is not None:
        gap = acc["gap_percentage_points"]
        lines.append(
            f"| MNIST-5k, 10 clients, Dirichlet 0.5, 20 rounds: SecAgg+ vs plain FedAvg | {acc['secure_final_accuracy']:.3f} vs {acc['plain_final_accuracy']:.3f} ({gap:+.2f} pp) | within 0.5 pp, ≥ 0.90 | {'met' if abs(gap) <= 0.5 and acc['secure_final_accuracy'] >= 0.9 else 'NOT met'} |"
        )
    dlg = _load(bench_dir / "dlg.json")
    if dlg is not None:
        res = dlg["results"]
        lines.append(
            f"| iDLG PSNR, plain update ({res['plain']['images']} MNIST images) | {res['plain']['mean_psnr_db']:.1f} dB | ≥ 40 dB | {'met' if res['plain']['mean_psnr_db'] >= 40 else 'NOT met'} |"
        )
        lines.append(
            f"| iDLG PSNR, quantised update | {res['quantised']['mean_psnr_db']:.1f} dB | (reported) | |"
        )
        lines.append(
            f"| iDLG PSNR, masked upload | {res['masked']['mean_psnr_db']:.1f} dB, labels {res['masked']['label_accuracy']:.2f} | ≤ 6 dB | {'met' if res['masked']['mean_psnr_db'] <= 6 else 'NOT met'} |"
        )
    lines += chronos_rows(bench_dir) + chronos_net_rows(bench_dir) + server_rows(bench_dir)
    lines += startup_rows(bench_dir)
    lines += abuse_rows(bench_dir)
    lines += robust_rows(bench_dir)
    return "\n".join(lines)
