"""Schemathesis against the app's own OpenAPI (in-process ASGI) with its default checks.

Each operation is fuzzed with schema-conforming and schema-violating requests, and every answer
must conform to the spec: no 5xx, documented status codes, ``application/problem+json`` errors,
documented headers (``Retry-After`` on 429). The configuration and the msgpack serializer are
the ones ``schemathesis run`` uses against a live server (``schemathesis.toml``,
``tests/schemathesis_hooks.py``). The operations are driven through
``APIOperation.as_strategy`` rather than ``schemathesis.pytest.from_fixture``, whose lazy loader
is not compatible with pytest 9.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qflare.authority import AuthoritySettings
from qflare.authority.app import create_authority_app
from qflare.server.app import create_app
from qflare.store.models import Device
from tests.authority.helpers import TestAuthority, make_authority
from tests.server.conftest import make_settings

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

import tests.schemathesis_hooks  # noqa: E402, F401 - registers the msgpack serializer

EXAMPLES = 60


def _fuzz(operation, mode: GenerationMode, checks: list | None = None) -> None:
    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        case.call_and_validate(checks=checks)  # None: the defaults, as in schemathesis.toml

    run()


@pytest.fixture
def authority(tmp_path: Path) -> Iterator[TestAuthority]:
    auth = make_authority(tmp_path / "authority")
    yield auth
    auth.close()


def _app(tmp_path: Path, authority: TestAuthority, **overrides: Any) -> FastAPI:
    """The server with an in-process enrollment authority (else enrollment answers 503)."""
    config = make_settings(
        f"sqlite:///{tmp_path}/db.sqlite", tmp_path, authority_key=authority.pub, **overrides
    )
    return create_app(config, authority=authority.service)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_server_error(tmp_path: Path, authority, mode: GenerationMode):
    app = _app(
        tmp_path,
        authority,
        rate_per_ip=1e9,  # fuzz the handlers, not the rate limiter
        long_poll_max_s=0.1,
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /v1/enroll", "POST /v1/sessions", "GET /v1/tasks", "POST /v1/results"} <= labels
    for operation in operations:
        # schemathesis cannot negate an opaque binary body, only parameters
        negatable = any(operation.iter_parameters()) and not any(operation.body)
        if mode is GenerationMode.POSITIVE or negatable:
            _fuzz(operation, mode)


def test_the_harness_reports_a_server_error(tmp_path: Path):
    """The check above is real: an operation that fails for some inputs is caught."""
    app = create_app(make_settings(f"sqlite:///{tmp_path}/db.sqlite", tmp_path))

    @app.get("/v1/boom")
    def boom(x: int = 0) -> dict[str, int]:
        if x > 5:
            raise RuntimeError("boom")
        return {"x": x}

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    (operation,) = [r.ok() for r in schema.get_all_operations() if r.ok().label == "GET /v1/boom"]
    with pytest.raises(RuntimeError, match="boom"):  # the in-process transport re-raises
        _fuzz(operation, GenerationMode.POSITIVE)


_INT = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what msgpack can carry
_ANY = st.one_of(
    st.none(),
    st.booleans(),
    _INT,
    st.floats(),
    st.text(max_size=64),
    st.binary(max_size=64),
    st.lists(_INT, max_size=3),
    st.dictionaries(st.text(max_size=8), _INT, max_size=2),
)
_BODIES = {
    "/v1/enroll": st.fixed_dictionaries(
        {},
        optional={
            "version": _ANY,
            "claims": st.one_of(_ANY, st.binary(min_size=60, max_size=200)),
            "signature": st.one_of(_ANY, st.binary(min_size=3309, max_size=3309)),
            "proof": st.one_of(_ANY, st.binary(min_size=32, max_size=32)),
            "identity_pk": st.one_of(_ANY, st.binary(min_size=32, max_size=32)),
            "kem_pk": st.one_of(_ANY, st.binary(min_size=1216, max_size=1216)),
            "scheme": st.one_of(_ANY, st.sampled_from(["ed25519", "mldsa65", "hybrid"])),
        },
    ),
    "/v1/sessions": st.fixed_dictionaries(
        {},
        optional={
            "device_id": _ANY,
            "nonce": st.one_of(_ANY, st.binary(min_size=32, max_size=32)),
            "kem_pk": st.one_of(_ANY, st.binary(min_size=1216, max_size=1216)),
            "timestamp": _ANY,
            "signature": st.one_of(_ANY, st.binary(min_size=64, max_size=64)),
        },
    ),
    "/v1/results": st.fixed_dictionaries(
        {}, optional={"session_id": _ANY, "seq": _ANY, "ciphertext": _ANY, "version": _ANY}
    ),
}


def test_msgpack_shaped_bodies_never_get_a_server_error(tmp_path: Path, authority):
    """Well-formed msgpack maps with the right field names and wrong values: 4xx, no rows."""
    with TestClient(_app(tmp_path, authority, rate_per_ip=1e9)) as client:

        @given(path=st.sampled_from(sorted(_BODIES)), data=st.data())
        @settings(max_examples=150, deadline=None, derandomize=True, database=None)
        def run(path: str, data: st.DataObject) -> None:
            body = msgspec.msgpack.encode(data.draw(_BODIES[path]))
            resp = client.post(path, content=body, headers={"content-type": "application/msgpack"})
            assert 400 <= resp.status_code < 500, (path, resp.status_code, resp.text)

        run()
        with client.app.state.ctx.factory() as db:
            assert db.query(Device).count() == 0
    assert authority.service.certificates() == []


def test_the_authority_never_answers_with_a_server_error(tmp_path: Path, authority):
    """The authority's own API, fuzzed the same way (its body is opaque msgpack): no 5xx."""
    app = create_authority_app(AuthoritySettings(dir=authority.directory))
    with TestClient(app):  # the service is opened in the lifespan
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        for result in schema.get_all_operations():
            _fuzz(result.ok(), GenerationMode.POSITIVE, [not_a_server_error])
    assert authority.service.certificates() == []
