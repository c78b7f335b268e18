"""``qflare bench robust`` at a tiny size: the JSON's shape (timings are not judged here)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from qflare.cli.app import app
from qflare.fl.robust import DEFENCES


def test_bench_robust_writes_one_entry_per_defence(tmp_path: Path) -> None:
    out = tmp_path / "robust.json"
    args = ["bench", "robust", "--clients", "12", "--dim", "300", "--outliers", "0.25"]
    result = CliRunner().invoke(app, [*args, "--repeat", "2", "--json", "--output", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert json.loads(result.stdout) == data
    assert data["benchmark"] == "robust"
    assert data["config"]["clients"] == 12 and data["config"]["outlier_rows"] == 3
    assert set(data["defences"]) == set(DEFENCES)
    for name, case in data["defences"].items():
        assert case["median_s"] >= 0 and case["min_s"] <= case["median_s"] <= case["max_s"]
        assert 0 <= case["outliers_accepted"] <= case["accepted"] <= 12, name
        assert (case["target_s"] is None) == (case["met"] is None), name
    assert data["defences"]["fedavg"]["outliers_accepted"] == 3
    assert data["defences"]["krum"]["accepted"] == 1
    assert data["defences"]["cosine"]["outliers_accepted"] == 0
    assert "median_s" in data["cosine_without_reference"]
    assert isinstance(data["targets_met"], bool) and data["peak_rss_mb"] > 0
    assert all(c["peak_alloc_mb"] >= 0 for c in data["defences"].values())
    assert len(data["load_average"]["before"]) == 3 and "system" in data["machine"]


def test_bench_robust_rejects_a_bad_option() -> None:
    result = CliRunner().invoke(app, ["bench", "robust", "--clients", "2"])
    assert result.exit_code != 0
