"""``qflare certs|server|device``: settings precedence, refusals, the admin round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from qflare.cli import server_cmds
from qflare.cli.app import app
from qflare.cli.server_cmds import load_settings, parse_duration
from qflare.ledger import Ledger
from qflare.server.settings import ServerSettings
from qflare.store.repos import SqlLedgerStore
from tests.server.conftest import Harness

runner = CliRunner()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45s", 45), ("30m", 1800), ("1h", 3600), ("2d", 172_800), ("1w", 604_800), ("1h30m", 5400)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds
    assert parse_duration(text.upper()) == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "-1h", "0m", "1.5h", "1y", "1h 30m", "h1"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def _lines(output: str, needle: str) -> list[str]:
    return [line for line in output.splitlines() if needle in line]


def test_the_server_has_no_token_commands_any_more():
    res = runner.invoke(app, ["token", "create"])
    assert res.exit_code != 0  # tokens belong to `qflare authority token`


def test_device_list_and_revoke(server: Harness):
    db = ["--database-url", server.ctx.settings.database_url]
    server.enrolled()
    dev = server.enrolled()
    (line,) = _lines(runner.invoke(app, ["device", "list", *db]).output, dev.device_id)
    assert "active" in line and "ed25519" in line
    cells = [c.strip() for c in line.split("│") if c.strip()]
    assert cells[1:3] == ["1", "2"]  # client index 1, certificate serial 2
    res = runner.invoke(app, ["device", "revoke", dev.device_id, *db])
    assert res.exit_code == 0, res.output
    (line,) = _lines(runner.invoke(app, ["device", "list", *db]).output, dev.device_id)
    assert "revoked" in line
    assert runner.invoke(app, ["device", "revoke", dev.device_id, *db]).exit_code == 1
    assert dev.hello(dev.initiator()).status_code == 403
    entries = Ledger(SqlLedgerStore(server.ctx.factory)).entries()
    assert (entries[-1].kind, entries[-1].payload) == ("device_revoke", {"device": dev.device_id})


def test_settings_precedence_options_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    toml = tmp_path / "server.toml"
    toml.write_text('port = 9001\nhost = "127.0.0.2"\nmin_clients = 5\ndataset = "digits"\n')
    monkeypatch.setenv("QFLARE_PORT", "9002")
    monkeypatch.setenv("QFLARE_MIN_CLIENTS", "7")
    s = load_settings(toml, port=9003, host=None)
    assert (s.port, s.host, s.min_clients, s.dataset) == (9003, "127.0.0.2", 7, "digits")
    monkeypatch.delenv("QFLARE_PORT")
    as_json = tmp_path / "server.json"
    as_json.write_text(json.dumps({"port": 9004, "insecure": True}))
    s = load_settings(as_json)
    assert (s.port, s.insecure, s.min_clients) == (9004, True, 7)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.toml", "prot = 1\n", "unknown settings prot"),
        ("a.toml", "port = \n", "a.toml"),
        ("a.json", "[1]", "table of settings"),
        ("a.yaml", "port: 1", ".toml or .json"),
        ("a.toml", 'port = "http"\n', "port"),
    ],
)
def test_bad_config_files_are_refused(tmp_path: Path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(typer.BadParameter, match=message):
        load_settings(path)


def _serve_stub(monkeypatch: pytest.MonkeyPatch) -> list[ServerSettings]:
    served: list[ServerSettings] = []
    monkeypatch.setattr(server_cmds, "serve", lambda settings, log_level: served.append(settings))
    return served


def test_server_refuses_to_start_without_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    served = _serve_stub(monkeypatch)
    res = runner.invoke(app, ["server", "--state-dir", str(tmp_path / "state")])
    assert res.exit_code == 2 and "TLS is required" in res.stderr
    res = runner.invoke(app, ["server", "--insecure", "--host", "0.0.0.0"])
    assert res.exit_code == 2 and "plain HTTP" in res.stderr
    assert served == []


def test_server_insecure_is_loud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    served = _serve_stub(monkeypatch)
    res = runner.invoke(app, ["server", "--insecure", "--state-dir", str(tmp_path), "--port", "0"])
    assert res.exit_code == 0, res.output
    assert "INSECURE MODE" in res.stderr and "INSECURE" not in res.stdout
    assert served[0].insecure and served[0].port == 0


def test_certs_init_then_server_finds_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    served = _serve_stub(monkeypatch)
    state = tmp_path / "state"
    res = runner.invoke(
        app,
        ["certs", "init", "--hosts", "localhost,127.0.0.1,::1"],
        env={"QFLARE_STATE_DIR": str(state)},
    )
    assert res.exit_code == 0, res.output
    assert (state / "tls" / "server.key").stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o777 == 0o700
    assert "CA sha256" in res.stdout
    again = runner.invoke(app, ["certs", "init", "--dir", str(state / "tls")])
    assert again.exit_code == 2 and "--force" in again.output
    bad = runner.invoke(app, ["certs", "init", "--dir", str(tmp_path / "x"), "--hosts", "a b"])
    assert bad.exit_code == 2
    res = runner.invoke(app, ["server", "--state-dir", str(state)], env={"QFLARE_MIN_CLIENTS": "3"})
    assert res.exit_code == 0, res.output
    assert served[0].tls_cert == state / "tls" / "server.pem"
    assert served[0].tls_key == state / "tls" / "server.key"
