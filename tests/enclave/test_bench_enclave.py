"""``qflare bench enclave`` at a tiny size: the JSON's shape (timings are not judged here)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from qflare.cli.app import app


def test_bench_enclave_writes_open_rate_and_finish_times(tmp_path: Path) -> None:
    out = tmp_path / "enclave.json"
    args = ["bench", "enclave", "--clients", "5", "--dim", "64", "--outliers", "0.2"]
    sizes = ["--open-uploads", "4", "--open-dim", "32"]
    result = CliRunner().invoke(app, [*args, *sizes, "--json", "--output", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert json.loads(result.stdout) == data
    assert data["benchmark"] == "enclave" and data["tee"].startswith("simulated")
    opened = data["open"]
    assert opened["uploads"] == 4 == opened["accepted"] and opened["dim"] == 32
    assert opened["open"]["per_s"] > 0 and opened["ipc_and_decode_only"]["per_s"] > 0
    assert isinstance(opened["met"], bool) and opened["target_per_s"] == 200.0
    assert set(data["finish"]) == {"fedavg", "cosine", "median", "trimmed-mean", "krum"}
    for case in data["finish"].values():
        assert case["finish_s"] > 0 and case["delta_bytes"] == 64 * 8
        assert case["accepted"] + case["rejected"] == 5
    assert data["finish"]["krum"]["accepted"] == 1
    assert isinstance(data["targets_met"], bool)
    assert len(data["load_average"]["before"]) == 3 and "system" in data["machine"]
