"""HTTP-level errors: 405 names the allowed methods, unknown paths are problem+json."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server.helpers import code


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/db.sqlite"


def test_405_names_the_allowed_methods(server):
    resp = server.client.request("TRACE", "/v1/health")
    assert resp.status_code == 405 and resp.headers["allow"] == "GET"
    assert code(resp) is None  # problem+json, no qflare code: it is HTTP's own


def test_an_undeclared_method_is_405_even_with_a_session_header(server):
    resp = server.client.request("TRACE", "/v1/tasks", headers={"X-QFLARE-Session": "0" * 32})
    assert resp.status_code == 405 and resp.headers["allow"] == "GET"


def test_every_operation_documents_rate_limits_and_problems(server):
    spec = server.client.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            limited = operation["responses"]["429"]
            assert limited["headers"]["Retry-After"]["required"], (method, path)
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert list(answer["content"]) == ["application/problem+json"], (path, status)
