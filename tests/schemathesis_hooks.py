"""Schemathesis hooks: how to send an ``application/msgpack`` body.

Loaded by ``schemathesis run`` through ``schemathesis.toml`` (repository root) and imported by
``tests/server/test_openapi_fuzz.py`` for the in-process runs. Raw bytes go as they are (the
request bodies are documented as opaque binary); any other generated value goes as its msgpack
encoding.
"""

from __future__ import annotations

import msgspec
import schemathesis
from schemathesis.transport.serialization import Binary


@schemathesis.serializer("application/msgpack")
def msgpack_body(_ctx: object, value: object) -> dict[str, bytes]:
    """The body of a request in bytes."""
    if isinstance(value, Binary):
        return {"data": value.data}
    if isinstance(value, bytes):
        return {"data": value}
    return {"data": msgspec.msgpack.encode(value)}
