"""Impossible input to any option of any command: exit 2, one message naming it, no traceback.

The sweep walks the whole Typer tree (``tests/cli/walk.py``), so a command or option added later
is swept too. Every numeric option must declare its range (``typer.Option(min=…, max=…)``) and
every fixed set of values must be a ``Literal``: then parsing rejects bad values before the
command's function runs, so no long command (a demo, a benchmark, a server) is ever started here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from qflare.cli.app import app
from tests.cli.walk import OptionSpot, options

runner = CliRunner()


def _assert_clean_refusal(result, option: str) -> None:
    """Exit 2, Typer's usage lines and one error message naming ``option``, no traceback."""
    output = result.output
    assert result.exit_code == 2, output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    (line,) = [line for line in output.splitlines() if "Invalid value" in line]
    assert f"Invalid value for '{option}'" in line, output
    assert output.count("Error") == 1, output


def _bad_values(spot: OptionSpot) -> list[str]:
    """Malformed and out-of-range values for one option ([] when it takes free text)."""
    if spot.choices is not None:
        return ["no-such-choice"]
    if not spot.numeric:
        return []
    step = 1 if spot.option.type_descriptor.annotation is int else 0.5
    values = ["not-a-number"]
    if spot.option.min is not None:
        values.append(str(spot.option.min - step))
    if spot.option.max is not None:
        values.append(str(spot.option.max + step))
    return values


CASES = [
    pytest.param(spot, value, id=f"{spot.label}={value}")
    for spot in options()
    for value in _bad_values(spot)
]
COMMAND = typer.main.get_command(app)  # built once: the sweep parses hundreds of command lines


@pytest.mark.parametrize(("spot", "value"), CASES)
def test_bad_values_are_refused_while_parsing(spot: OptionSpot, value: str):
    with pytest.raises(typer.BadParameter) as refused:  # raised before any command function runs
        COMMAND.main([*spot.path, f"{spot.name}={value}"], "qflare", standalone_mode=False)
    assert refused.value.exit_code == 2
    assert refused.value.format_message().startswith(f"Invalid value for '{spot.name}'")


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["params", "--clients", "0"], "--clients"),
        (["params", "--clients", "10", "--corrupt", "0.9"], "--corrupt"),
        (["params", "--clients", "10", "--dropout", "1.5"], "--dropout"),
        (["server", "--port", "70000"], "--port"),
        (["node", "enroll", "--scheme", "rsa"], "--scheme"),
        (["bench", "secagg", "--modulus-bits", "48"], "--modulus-bits"),
    ],
)
def test_what_the_operator_sees(args: list[str], option: str):
    result = runner.invoke(app, args)
    _assert_clean_refusal(result, option)


def test_every_numeric_option_declares_a_range():
    unbounded = [s.label for s in options() if s.numeric and s.option.min is None]
    assert unbounded == [], "give these options typer.Option(min=…, max=…)"


def test_the_sweep_covers_every_command_group():
    swept = {spot.path[0] for spot, _ in (case.values for case in CASES)}
    groups = {"server", "node", "authority", "witness", "ledger", "bench", "attack", "certs"}
    assert groups <= swept | {"tee"}  # tee has no numeric or choice options
    assert {"params", "simulate", "demo"} <= swept


# Options whose values are free text with a syntax: checked while parsing or before any work.
SPEC_CASES = [
    (["node", "run", "--trainer", "constant"], "--trainer"),
    (
        ["node", "run", "--shard", "0", "--shards", "1", "--partition", "dirichlet:-1"],
        "--partition",
    ),
    (["simulate", "--partition", "shards:x"], "--partition"),
    (["bench", "accuracy", "--partition", "nope"], "--partition"),
    (["authority", "token", "create", "--expires", "soon"], "--expires"),
    (["bench", "chronos", "--rtt-ms", "fast"], "--rtt-ms"),
    (["bench", "chronos-storage", "--dims", "1,x"], "--dims"),
]


@pytest.mark.parametrize(
    ("args", "option"), SPEC_CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else v
)
def test_malformed_specs_are_refused_before_work(args: list[str], option: str, tmp_path: Path):
    result = runner.invoke(app, args, env={"QFLARE_AUTHORITY_DIR": str(tmp_path)})
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert option in result.output
    assert not any(tmp_path.iterdir())  # nothing was created


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["params", "--clients", "3", "--dropout", "0.9"], "no (k, t) for n=3"),
        (["node", "run", "--shard", "3", "--shards", "2"], "shard must lie in [0, 2)"),
        (["node", "run", "--lr", "0", "--shard", "0", "--shards", "1"], "lr > 0"),
        (["simulate", "--lr", "0"], "lr > 0"),
        (["simulate", "--clients", "1"], "at least 3 clients per round"),
        (["simulate", "--clients", "500", "--dataset", "digits"], "cannot give 500 clients"),
        (["bench", "chronos", "--clients", "3", "--k", "3", "--t", "9"], "threshold 9 outside"),
    ],
)
def test_values_in_range_that_do_not_fit_together(args: list[str], message: str):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert message in " ".join(result.output.replace("│", " ").split())
