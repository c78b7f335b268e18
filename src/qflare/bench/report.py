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
            "Server, n=100, d=100k, 30 % drop after masked input, k=31, t=16",
            "server_compute_s",
            0.3,
        ),
        (
            "server_n100_before_masked.json",
            "Server, same, 30 % drop before masked input (masks regenerated)",
            "server_compute_s",
            0.3,
        ),
        (
            "client_n20_d1m.json",
            "Client per round, n=20, d=1M, k=11",
            "client_compute_mean_s",
            0.04,
        ),
        (
            "round_n100_k15.json",
            "Whole round in-process, n=100, d=100k, k=15 (all parties, signatures)",
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
    return "\n".join(lines)
