"""``qflare node enroll`` / ``qflare node run`` through Typer's CliRunner against a live server."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qflare.cli.node_cmds import node_app
from qflare.node import NodeState, RetryPolicy
from qflare.node.launch import RunOptions, run_node

from .conftest import LiveServer

cli = CliRunner()


@pytest.fixture(autouse=True)
def _restore_process_state():
    """The CLI configures logging and installs signal handlers; undo both after each test."""
    logger = logging.getLogger("qflare")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    logger.handlers[:], logger.level, logger.propagate = saved
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def _enroll(live: LiveServer, root: Path, token: str | None = None):
    args = ["enroll", "--server", live.url, "--insecure", "--state-dir", str(root)]
    args += ["--token", token or live.new_token(), "--scheme", "ed25519"]
    return cli.invoke(node_app, args)


def test_plain_http_is_refused_without_insecure(tmp_path):
    result = cli.invoke(
        node_app,
        ["enroll", "--server", "http://127.0.0.1:9", "--token", "t", "--state-dir", str(tmp_path)],
    )
    assert result.exit_code == 2
    assert "--insecure" in result.output


def test_enroll_reports_the_device_and_refused_tokens(live_server: LiveServer, tmp_path):
    token = live_server.new_token()
    ok = _enroll(live_server, tmp_path / "a", token)
    assert ok.exit_code == 0, ok.output
    device = NodeState.open(tmp_path / "a").require_device()
    assert device.device_id in ok.output

    used = _enroll(live_server, tmp_path / "b", token)
    assert used.exit_code == 1 and "token_used" in used.output
    again = _enroll(live_server, tmp_path / "a")
    assert again.exit_code == 1 and "already enrolled" in again.output


def test_run_needs_an_enrolled_node_and_a_trainer(tmp_path):
    missing = cli.invoke(
        node_app,
        ["run", "--state-dir", str(tmp_path), "--insecure", "--trainer", "constant:1"],
    )
    assert missing.exit_code == 2 and "enroll" in missing.output
    no_shard = cli.invoke(node_app, ["run", "--state-dir", str(tmp_path), "--dataset", "digits"])
    assert no_shard.exit_code == 2 and "--shard" in no_shard.output


def test_run_takes_part_in_a_round_with_two_other_nodes(live_server: LiveServer, tmp_path):
    roots = [tmp_path / f"n{i}" for i in range(3)]
    for root in roots:
        assert _enroll(live_server, root).exit_code == 0
    stop = threading.Event()
    fast = RetryPolicy(initial_s=0.05, max_delay_s=0.5)
    others = [
        threading.Thread(
            target=run_node,
            args=(
                RunOptions(
                    state_dir=root,
                    insecure=True,
                    trainer_spec=f"constant:{i}",
                    max_rounds=1,
                    poll_wait=1.0,
                    policy=fast,
                ),
                stop,
            ),
        )
        for i, root in enumerate(roots[1:], start=1)
    ]
    for t in others:
        t.start()
    try:
        result = cli.invoke(
            node_app,
            [
                "run",
                "--state-dir",
                str(roots[0]),
                "--insecure",
                "--trainer",
                "constant:9:7",
                "--max-rounds",
                "1",
                "--poll-wait",
                "1",
                "--seed",
                "5",
                "--log-level",
                "WARNING",
            ],
        )
    finally:
        for t in others:
            t.join(30)
        stop.set()
    assert result.exit_code == 0, result.output
    assert "rounds completed 1, dropped 0, results sent 5" in result.output
    assert "for tests only" in result.output  # the --seed warning
