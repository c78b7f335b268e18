"""The server's Cosigner against in-process witness apps (httpx ASGI transport, no sockets)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import httpx
import pytest

from qflare.crypto import DeterministicRng, MlDsa65Signer
from qflare.ledger import CosignRequest, Ledger, sign_tree_head, verify_cosigned_head
from qflare.server.witnesses import HEAD_FILE, Cosigner, WitnessEndpoint
from qflare.witness import WitnessService, create_witness_app
from tests.witness.helpers import make_service

SERVER = MlDsa65Signer.generate(DeterministicRng(b"ledger-operator"))


class Witnesses(httpx.AsyncBaseTransport):
    """Routes ``http://w<i>`` to witness app ``i``; hosts in ``down`` refuse connections."""

    def __init__(self, services: list[WitnessService]) -> None:
        self.services = services
        self.apps = {
            f"w{i}": httpx.ASGITransport(create_witness_app(s)) for i, s in enumerate(services)
        }
        self.down: set[str] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        return await self.apps[request.url.host].handle_async_request(request)

    def endpoints(self) -> list[WitnessEndpoint]:
        return [
            WitnessEndpoint(f"http://w{i}", s.status().public_key)
            for i, s in enumerate(self.services)
        ]


@pytest.fixture
def witnesses(tmp_path: Path) -> Witnesses:
    return Witnesses([make_service(tmp_path / f"w{i}", SERVER.public_key, i) for i in range(2)])


def grow(ledger: Ledger, n: int) -> Ledger:
    for _ in range(n):
        ledger.append("round_complete", "server", {"round": ledger.size}, time.time())
    return ledger


def cosigner(ledger, witnesses, tmp_path, endpoints=None, **kwargs) -> Cosigner:
    endpoints = witnesses.endpoints() if endpoints is None else endpoints
    return Cosigner(ledger, SERVER, endpoints, time.time, tmp_path, transport=witnesses, **kwargs)


def once(c: Cosigner, witnesses: Witnesses) -> bool:
    async def run() -> bool:
        async with httpx.AsyncClient(transport=witnesses) as client:
            return await c.cosign_once(client)

    return asyncio.run(run())


def test_growth_is_cosigned_persisted_and_served_after_a_restart(tmp_path, witnesses):
    ledger = grow(Ledger(), 3)
    c = cosigner(ledger, witnesses, tmp_path)
    assert c.current().cosignatures == ()  # nothing cosigned yet: a fresh, uncosigned head
    assert once(c, witnesses) is True
    keys = [e.public_key for e in witnesses.endpoints()]
    assert verify_cosigned_head(c.current(), keys, 2, SERVER.public_key)
    grow(ledger, 2)
    assert once(c, witnesses) is True and c.current().sth.tree_size == 5
    assert [s.state.tree_size for s in witnesses.services] == [5, 5]
    restarted = cosigner(ledger, witnesses, tmp_path)
    assert restarted.current() == c.current()  # served at once, from ledger-head.cosigned
    assert (tmp_path / HEAD_FILE).exists()


def test_one_witness_down_still_meets_a_quorum_of_one(tmp_path, witnesses, caplog):
    ledger = grow(Ledger(), 2)
    c = cosigner(ledger, witnesses, tmp_path, quorum=1)
    witnesses.down.add("w1")
    with caplog.at_level(logging.WARNING, logger="qflare.server.witnesses"):
        assert once(c, witnesses) is True
    assert len(c.current().cosignatures) == 1
    assert [r.getMessage() for r in caplog.records] == ["witness unreachable"]
    strict = cosigner(grow(ledger, 1), witnesses, tmp_path / "strict")
    assert once(strict, witnesses) is False  # quorum 2: the head is not served as cosigned
    assert strict.current().cosignatures == ()


def test_a_witness_that_moved_on_gets_a_proof_from_its_new_size(tmp_path, witnesses):
    ledger = grow(Ledger(), 2)
    c = cosigner(ledger, witnesses, tmp_path)
    assert once(c, witnesses)
    grow(ledger, 3)  # another instance of this server got witness 0 to cosign 4 entries
    sth4 = sign_tree_head(SERVER, 4, ledger.root(4), time.time())
    witnesses.services[0].cosign(CosignRequest(sth=sth4, proof=ledger.consistency_proof(2, 4)))
    assert once(c, witnesses) is True  # wrong_proof_range, then GET /v1/witness, then a retry
    assert [s.state.tree_size for s in witnesses.services] == [5, 5]


def test_a_witness_with_another_key_is_refused(tmp_path, witnesses, caplog):
    ledger = grow(Ledger(), 2)
    wrong = [witnesses.endpoints()[0], WitnessEndpoint("http://w1", SERVER.public_key)]
    c = cosigner(ledger, witnesses, tmp_path, endpoints=wrong)
    with caplog.at_level(logging.ERROR, logger="qflare.server.witnesses"):
        assert once(c, witnesses) is False
    assert any("another key" in str(r.__dict__.get("why")) for r in caplog.records)


def test_no_witnesses_signs_per_request(tmp_path, witnesses):
    ledger = grow(Ledger(), 2)
    c = cosigner(ledger, witnesses, tmp_path, endpoints=[])
    assert not c.enabled
    first = c.current()
    grow(ledger, 1)
    assert c.current().sth.tree_size == first.sth.tree_size + 1
