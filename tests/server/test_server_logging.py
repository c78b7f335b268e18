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
from fastapi import FastAPI
from typer.testing import CliRunner

from qflare.cli import server_cmds
from qflare.cli.app import app
from qflare.logs import UVICORN_LOGGERS, configure_logging
from qflare.server.app import unauthenticated_counter
from qflare.server.settings import ServerSettings
from qflare.server.tls import serve, uvicorn_config

LOGGERS = ("qflare", *UVICORN_LOGGERS)


@pytest.fixture(autouse=True)
def _restore_loggers() -> Iterator[None]:
    saved = {}
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers[:], logger.level, logger.propagate)
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


def _health_app() -> FastAPI:
    """A stand-in for the server's app: what is under test is the uvicorn and logging set-up."""
    app_ = FastAPI()
    app_.state.unauthenticated = unauthenticated_counter(ServerSettings(insecure=True))

    @app_.get("/v1/health")
    def health() -> dict[str, str]:
        logging.getLogger("qflare.server").info("health checked", extra={"probe": 1})
        return {"status": "ok"}

    return app_


def _serve_two_requests(level: str) -> list[dict[str, object]]:
    """Serve under uvicorn as ``qflare server`` does at ``level``; GET twice; the log records."""
    stream = io.StringIO()
    configure_logging(level, LOGGERS, stream=stream)
    server = uvicorn.Server(uvicorn_config(_health_app(), ServerSettings(insecure=True), level))
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
    return [json.loads(line) for line in stream.getvalue().splitlines()]  # every line is JSON


def test_info_logs_json_lines_without_access_log():
    records = _serve_two_requests("info")
    assert {"ts", "level", "logger", "msg"} <= set(records[0])
    assert any(
        r["logger"] == "uvicorn.error" and "startup complete" in str(r["msg"]) for r in records
    )
    assert not any(r["logger"] == "uvicorn.access" for r in records)
    assert not any("color_message" in r for r in records)
    probes = [r for r in records if r["logger"] == "qflare.server"]
    assert [(p["msg"], p["probe"]) for p in probes] == [("health checked", 1)] * 2


def test_debug_adds_the_access_log():
    records = _serve_two_requests("debug")
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert len(access) == 2 and "/v1/health" in str(access[0]["msg"])


def test_serve_configures_json_logging_for_qflare_and_uvicorn(monkeypatch: pytest.MonkeyPatch):
    configs: list[uvicorn.Config] = []
    monkeypatch.setattr("qflare.server.tls.create_app", lambda settings: _health_app())
    monkeypatch.setattr(
        uvicorn.Server, "run", lambda self, sockets=None: configs.append(self.config)
    )
    serve(ServerSettings(insecure=True, port=0), "warning")
    (config,) = configs
    assert config.access_log is False and config.log_config is None
    for name in ("qflare", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        assert logger.level == logging.WARNING and not logger.propagate
        assert type(logger.handlers[0].formatter).__name__ == "StructuredFormatter"
    assert not logging.getLogger("uvicorn.access").propagate  # uvicorn empties it: access log off


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
