import json

from typer.testing import CliRunner

from qflare.cli.app import app

runner = CliRunner()


def test_bench_secagg_json_small():
    res = runner.invoke(
        app,
        [
            "bench",
            "secagg",
            "--clients",
            "8",
            "--dim",
            "1000",
            "--dropout",
            "0.25",
            "--k",
            "5",
            "--t",
            "3",
            "--scheme",
            "ed25519",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["exact_sum"] is True
    assert data["survivors"] == 6
    assert data["ratios"]["upload_over_float32"] < 1.05
    assert data["floors"]["keystream_one_mask_s"] > 0


def test_bench_rejects_unknown_stage():
    res = runner.invoke(app, ["bench", "secagg", "--drop-stage", "R9"])
    assert res.exit_code != 0


def test_params_and_demo():
    res = runner.invoke(app, ["params", "--clients", "100"])
    assert res.exit_code == 0 and json.loads(res.stdout)["k"] < 100
    res = runner.invoke(app, ["demo", "--rounds", "0"])
    assert res.exit_code == 0, res.output
    assert (
        "exact modular sum matches plain sum of survivors' ring vectors: True"
        in res.stdout.replace("\n", " ")
        or "True" in res.stdout
    )
