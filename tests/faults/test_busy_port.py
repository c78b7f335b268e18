"""A second ``qflare server`` on a busy port stops before it opens (or migrates) the database."""

from __future__ import annotations

import socket
from pathlib import Path

from typer.testing import CliRunner

from qflare.cli.app import app


def test_a_busy_port_is_refused_before_the_database_is_touched(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        database = tmp_path / "second.sqlite"
        res = CliRunner().invoke(
            app,
            [
                "server",
                "--insecure",
                "--dev",
                "--port",
                str(port),
                "--database-url",
                f"sqlite:///{database}",
                "--state-dir",
                str(tmp_path / "state"),
            ],
        )
    assert res.exit_code == 2, res.output
    assert "cannot listen on 127.0.0.1" in " ".join(res.output.split())
    assert not database.exists() and not (tmp_path / "state").exists()
