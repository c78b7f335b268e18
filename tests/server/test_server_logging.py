"""``qflare server`` logs JSON lines; the per-request access log only at debug."""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from qflare.cli import server_cmds
from qflare.cli.app import app
from qflare.logs import configure_logging
from qflare.server.app import create_app
from qflare.server.settings import ServerSettings
from qflare.server.tls import uvicorn_config
from tests.server.conftest import make_settings

LOGGERS = ("qflare", "uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture(autouse=True)
def _restore_loggers() -> Iterator[None]:
    saved = {
        n: (lg.handlers[:], lg.level, lg.propagate) for n in LOGGERS if (lg := logging.getLogger(n))
    }
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


def _serve_two_requests(tmp_path: Path, level: str) -> list[dict[str, object]]:
    """Run the real app under uvicorn at ``level``, GET /v1/health twice; the log records."""
    stream = io.StringIO()
    configure_logging(level, ("qflare", "uvicorn"), stream=stream)
    settings = make_settings(f"sqlite:///{tmp_path}/db.sqlite", tmp_path)
    app_ = create_app(settings)
    server = uvicorn.Server(uvicorn_config(app_, settings, level))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for _ in range(2):
        assert httpx.get(f"{base}/v1/health", timeout=5).status_code == 200
    server.should_exit = True
    thread.join(10)
    app_.state.ctx.factory.kw["bind"].dispose()
    return [json.loads(line) for line in stream.getvalue().splitlines()]  # every line is JSON


def test_info_logs_json_lines_without_access_log(tmp_path: Path):
    records = _serve_two_requests(tmp_path, "info")
    assert {"ts", "level", "logger", "msg"} <= set(records[0])
    assert any(
        r["logger"] == "uvicorn.error" and "startup complete" in str(r["msg"]) for r in records
    )
    assert not any(r["logger"] == "uvicorn.access" for r in records)
    assert not any("color_message" in r for r in records)


def test_debug_adds_the_access_log(tmp_path: Path):
    records = _serve_two_requests(tmp_path, "debug")
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert len(access) == 2 and "/v1/health" in str(access[0]["msg"])


def test_log_level_option_and_variable_reach_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    served: list[tuple[ServerSettings, str]] = []
    monkeypatch.setattr(server_cmds, "serve", lambda s, level: served.append((s, level)))
    base = ["server", "--insecure", "--state-dir", str(tmp_path)]
    assert CliRunner().invoke(app, [*base, "--log-level", "DEBUG"]).exit_code == 0
    result = CliRunner().invoke(app, base, env={"QFLARE_LOG_LEVEL": "WARNING"})
    assert result.exit_code == 0, result.output
    assert [(s.log_level, level) for s, level in served] == [
        ("debug", "debug"),
        ("warning", "warning"),
    ]
    bad = CliRunner().invoke(app, base, env={"QFLARE_LOG_LEVEL": "loud"})
    assert bad.exit_code == 2 and "log_level" in bad.output
