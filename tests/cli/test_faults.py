"""A wrong path, an unreadable file or a database that cannot be opened: one line, exit 1."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qflare.cli.app import app
from qflare.cli.faults import describe_fault, one_line

runner = CliRunner()


def _cases(tmp: Path) -> list[tuple[list[str], str]]:
    afile = tmp / "afile"
    afile.write_text("not a directory")
    (tmp / "adir").mkdir()
    return [
        (["device", "list", "--database-url", f"sqlite:///{tmp}/missing/x.db"], "database:"),
        (["device", "list", "--database-url", "nosuchdb://x"], "database:"),
        (["device", "revoke", "D", "--database-url", f"sqlite:///{afile}/x.db"], "database:"),
        (["authority", "init", "--dir", f"{afile}/sub"], "Not a directory"),
        (["authority", "certs", "--dir", str(afile)], "does not exist"),
        (["certs", "init", "--dir", f"{afile}/tls"], "Not a directory"),
        (["witness", "status", "--dir", str(tmp / "nowhere")], "No such file"),
        (["witness", "init", "--dir", str(afile)], str(afile)),
        (["ledger", "server-key", "--state-dir", str(afile)], str(afile)),
        (["ledger", "server-key", "--state-dir", str(tmp / "s"), "--out", f"{afile}/k"], "afile"),
        (["node", "run", "--state-dir", str(afile), "--trainer", "constant:1"], "afile"),
        (["node", "run", "--state-dir", str(tmp / "nowhere"), "--trainer", "constant:1"], "enroll"),
        (["tee", "maker-init", "--dir", str(afile)], "afile"),
    ]


def test_faults_of_the_environment_are_one_line(tmp_path: Path):
    for args, needle in _cases(tmp_path):
        result = runner.invoke(app, args)
        output = result.output
        assert result.exit_code in (1, 2), (args, output)
        assert isinstance(result.exception, SystemExit), (args, repr(result.exception))
        assert "Traceback" not in output, args
        assert needle in output, (args, output)
        if result.exit_code == 1:  # usage errors (2) come with Typer's usage lines
            assert len(output.strip().splitlines()) == 1, (args, output)


def test_describe_fault():
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y")
    assert describe_fault(missing) == "No such file or directory: /x/y"
    assert describe_fault(ConnectionRefusedError("refused")) == "refused"
    assert describe_fault(ValueError("a bug")) is None
    assert one_line("\n first\nsecond") == "first"


def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("QFLARE_DEBUG", "1")
    afile = tmp_path / "afile"
    afile.write_text("")
    result = runner.invoke(app, ["authority", "init", "--dir", f"{afile}/sub"])
    assert isinstance(result.exception, NotADirectoryError)
