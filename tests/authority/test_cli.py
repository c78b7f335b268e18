"""``qflare authority init|token create|token list|token revoke|certs`` through CliRunner."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from qflare.authority import AuthorityService, AuthoritySettings
from qflare.cli.app import app
from qflare.crypto import SystemRng
from qflare.protocol.identity import decode_claims, parse_token
from tests.authority.helpers import request_for

runner = CliRunner()


def test_authority_cli_round_trip(tmp_path: Path):
    d = ["--dir", str(tmp_path / "auth")]
    init = runner.invoke(app, ["authority", "init", *d])
    assert init.exit_code == 0, init.output
    assert "offline" in init.stdout and "authority.pub" in init.stdout
    assert (tmp_path / "auth" / "authority.key").stat().st_mode & 0o777 == 0o600
    assert runner.invoke(app, ["authority", "init", *d]).exit_code == 1

    made = runner.invoke(
        app, ["authority", "token", "create", *d, "--expires", "2h", "--label", "edge-7"]
    )
    assert made.exit_code == 0, made.output
    token = made.stdout.strip()
    claims = decode_claims(parse_token(token).claims)
    listing = runner.invoke(app, ["authority", "token", "list", *d]).output
    assert token not in listing and token[5:25] not in listing
    (line,) = [ln for ln in listing.splitlines() if claims.token_id in ln]
    assert "edge-7" in line and "live" in line

    other = runner.invoke(app, ["authority", "token", "create", *d]).stdout.strip()
    other_id = decode_claims(parse_token(other).claims).token_id
    assert runner.invoke(app, ["authority", "token", "revoke", other_id, *d]).exit_code == 0
    assert runner.invoke(app, ["authority", "token", "revoke", other_id, *d]).exit_code == 1

    settings = AuthoritySettings(dir=tmp_path / "auth")
    service = AuthorityService.open(settings, clock=lambda: claims.expires_at - 60, rng=SystemRng())
    issued = service.issue(request_for(token))
    service.close()
    certs = runner.invoke(app, ["authority", "certs", *d]).output
    (line,) = [ln for ln in certs.splitlines() if issued.device_id in ln]
    assert line.split()[1] == "1" and claims.token_id in line
    listing = runner.invoke(app, ["authority", "token", "list", *d]).output
    assert f"used by {issued.device_id}" in listing


def test_commands_without_a_key_say_how_to_make_one(tmp_path: Path):
    for args in (["token", "create"], ["token", "list"], ["certs"], ["serve"]):
        res = runner.invoke(app, ["authority", *args, "--dir", str(tmp_path / "none")])
        assert res.exit_code == 1 and "authority init" in res.output, (args, res.output)
    bad = runner.invoke(
        app, ["authority", "token", "create", "--dir", str(tmp_path), "--expires", "31d"]
    )
    assert bad.exit_code != 0


def test_token_create_count_prints_distinct_single_use_tokens(tmp_path: Path):
    d = ["--dir", str(tmp_path / "auth")]
    assert runner.invoke(app, ["authority", "init", *d]).exit_code == 0
    made = runner.invoke(app, ["authority", "token", "create", *d, "--count", "3"])
    assert made.exit_code == 0, made.output
    tokens = made.stdout.split()
    ids = {decode_claims(parse_token(t).claims).token_id for t in tokens}
    assert len(tokens) == 3 and len(ids) == 3
    listing = runner.invoke(app, ["authority", "token", "list", *d]).output
    assert all(any(i in ln and "live" in ln for ln in listing.splitlines()) for i in ids)
    zero = runner.invoke(app, ["authority", "token", "create", *d, "--count", "0"])
    assert zero.exit_code != 0
