"""``qflare attack poison``: the JSON it writes and how it refuses bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qflare.cli.app import app
from qflare.cli.options import POISON_ATTACKS
from qflare.fl.poison import ATTACKS

runner = CliRunner()


def test_the_cli_attack_names_match_the_library():
    assert POISON_ATTACKS == ATTACKS


def test_a_tiny_grid_writes_the_documented_json_and_plot(tmp_path: Path):
    out, png = tmp_path / "p.json", tmp_path / "p.png"
    args = ["attack", "poison", "--dataset", "digits", "--clients", "5", "--rounds", "1"]
    args += ["--attack", "backdoor", "--attack", "ipm", "--defence", "median", "--malicious", "0.2"]
    result = runner.invoke(app, [*args, "--output", str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "backdoor ASR" in result.output and "Δ vs clean" in result.output
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "poison"
    assert doc["setup"]["dataset"] == "digits" and doc["setup"]["malicious_fraction"] == 0.2
    assert len(doc["malicious"]) == 1
    assert doc["attacks"] == ["ipm", "backdoor"] and doc["defences"] == ["median"]
    assert doc["clean"]["defence"] == "fedavg" and doc["clean"]["attack"] is None
    assert [(r["attack"], r["defence"]) for r in doc["runs"]] == [
        ("backdoor", "median"),
        ("ipm", "median"),
    ]
    (clean_median,) = doc["clean_defences"]  # --clean-defences is the default
    assert (clean_median["attack"], clean_median["defence"]) == (None, "median")
    for run in [doc["clean"], clean_median, *doc["runs"]]:
        assert len(run["accuracy"]) == 2  # round 0 and round 1
        assert run["final_accuracy"] == run["accuracy"][-1]
        assert len(run["rejected_malicious"]) == len(run["rejected_honest"]) == 1
    backdoor, ipm = doc["runs"]
    assert 0.0 <= backdoor["backdoor_asr"] <= 1.0 and ipm["backdoor_asr"] is None
    assert backdoor["delta_vs_clean"] == pytest.approx(
        backdoor["final_accuracy"] - doc["clean"]["final_accuracy"]
    )
    assert png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("args", "option", "message"),
    [
        (["--attack", "flood"], "--attack", "unknown attack 'flood'"),
        (["--defence", "krumm"], "--defence", "unknown defence 'krumm'"),
        (["--malicious", "0.5"], "--malicious", "not in the range 0<=x<0.5"),
        (["--malicious", "-0.1"], "--malicious", "greater than or equal to 0"),
        (["--clients", "500", "--dataset", "digits"], "--", "cannot give 500 clients"),
    ],
)
def test_bad_input_is_one_clear_line_without_traceback(args: list[str], option: str, message: str):
    result = runner.invoke(app, ["attack", "poison", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    flat = " ".join(result.output.replace("│", " ").split())
    assert flat.count("Invalid value") == 1 and option in flat and message in flat
