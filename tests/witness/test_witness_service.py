"""The witness process's pieces: its directory, its persisted state, its HTTP API."""

import os
import stat
import time

import msgspec
import pytest
from fastapi.testclient import TestClient

from qflare.crypto import DeterministicRng, MlDsa65Signer
from qflare.ledger import (
    Cosignature,
    CosignRequest,
    Ledger,
    RefusalCode,
    WitnessRefused,
    decode_public_key,
    key_fingerprint,
    verify_cosignature,
)
from qflare.ledger.wire import MSGPACK, WitnessStatus
from qflare.witness import WitnessDir, WitnessDirError, WitnessService, create_witness_app
from tests.witness.helpers import make_service

MP = {"content-type": MSGPACK, "accept": MSGPACK}


@pytest.fixture(scope="module")
def server_key():
    return MlDsa65Signer.generate(DeterministicRng(b"server"))


def grow(ledger, n):
    for _ in range(n):
        ledger.append("round_complete", "server", {"round": ledger.size}, 1.0 + ledger.size)
    return ledger


def cosign_request(ledger, signer, old_size):
    sth = ledger.head(signer, time.time())
    return CosignRequest(sth=sth, proof=ledger.consistency_proof(old_size, sth.tree_size))


def test_init_makes_a_private_seed_and_a_public_key_file(tmp_path):
    wdir, public_key = WitnessDir.init(tmp_path / "w", DeterministicRng(b"w"))
    assert stat.S_IMODE(os.stat(tmp_path / "w" / "witness.seed").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "w").st_mode) == 0o700
    text = wdir.public_key_file.read_text()
    assert decode_public_key(text) == public_key == wdir.signer().public_key
    assert key_fingerprint(public_key).hex() in text
    with pytest.raises(WitnessDirError, match="exists"):
        WitnessDir.init(tmp_path / "w", DeterministicRng(b"w"))
    os.chmod(tmp_path / "w" / "witness.seed", 0o644)
    with pytest.raises(WitnessDirError, match="chmod 600"):
        wdir.signer()


def test_a_restarted_witness_keeps_its_state(tmp_path, server_key):
    ledger = grow(Ledger(), 4)
    service = make_service(tmp_path / "w", server_key.public_key)
    service.cosign(cosign_request(ledger, server_key, 0))
    again = WitnessService.open(WitnessDir(tmp_path / "w"), server_key.public_key, time.time)
    assert (again.state.tree_size, again.state.root_hash) == (4, ledger.root())
    with pytest.raises(WitnessRefused) as err:  # it still needs a proof from 4
        again.cosign(cosign_request(grow(ledger, 2), server_key, 0))
    assert err.value.code is RefusalCode.WRONG_PROOF_RANGE
    again.cosign(cosign_request(ledger, server_key, 4))
    assert WitnessDir(tmp_path / "w").saved_state().tree_size == 6


def test_a_refusal_leaves_the_persisted_state_alone(tmp_path, server_key, other_signer):
    ledger = grow(Ledger(), 3)
    service = make_service(tmp_path / "w", server_key.public_key)
    service.cosign(cosign_request(ledger, server_key, 0))
    before = (tmp_path / "w" / "state.msgpack").read_bytes()
    with pytest.raises(WitnessRefused):
        service.cosign(cosign_request(grow(ledger, 1), other_signer, 3))
    assert (tmp_path / "w" / "state.msgpack").read_bytes() == before


def test_the_state_pins_one_ledger_key(tmp_path, server_key, other_signer):
    make_service(tmp_path / "w", server_key.public_key)
    with pytest.raises(WitnessDirError, match="--server-key"):
        WitnessService.open(WitnessDir(tmp_path / "w"), other_signer.public_key, time.time)


def test_one_process_per_witness_directory(tmp_path):
    wdir, _ = WitnessDir.init(tmp_path / "w", DeterministicRng(b"w"))
    with wdir.lock(), pytest.raises(WitnessDirError, match="another process"), wdir.lock():
        pass


def test_http_api_cosigns_and_refuses_with_codes(tmp_path, server_key):
    ledger = grow(Ledger(), 5)
    service = make_service(tmp_path / "w", server_key.public_key)
    client = TestClient(create_witness_app(service))
    status = msgspec.msgpack.decode(
        client.get("/v1/witness", headers=MP).content, type=WitnessStatus
    )
    assert (status.tree_size, status.sth, status.origin) == (
        0,
        None,
        key_fingerprint(server_key.public_key),
    )
    body = msgspec.msgpack.encode(cosign_request(ledger, server_key, 0))
    resp = client.post("/v1/cosign", content=body, headers=MP)
    assert resp.status_code == 200, resp.text
    cosig = msgspec.msgpack.decode(resp.content, type=Cosignature)
    verify_cosignature(cosig, status.public_key, status.origin, service.state.sth)
    view = client.get("/v1/witness").json()  # JSON for people, bytes in hex
    assert view["tree_size"] == 5 and view["root_hash"] == ledger.root().hex()
    # another history: 409 inconsistent, problem+json
    forged = Ledger()
    forged.append("round_complete", "server", {"round": 99}, 9.0)
    grow(forged, 5)
    stale = msgspec.msgpack.encode(cosign_request(forged, server_key, 5))
    resp = client.post("/v1/cosign", content=stale, headers=MP)
    assert resp.status_code == 409
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["code"] == RefusalCode.INCONSISTENT.value


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"", 400, "malformed_body"),
        (b"\x93\x01\x02", 400, "malformed_body"),
        (msgspec.msgpack.encode({"version": 1, "sth": 3}), 400, "malformed_body"),
        (b"\x00" * (65 * 1024), 413, "body_too_large"),
    ],
)
def test_http_api_refuses_malformed_bodies(tmp_path, server_key, body, status, code):
    client = TestClient(create_witness_app(make_service(tmp_path / "w", server_key.public_key)))
    resp = client.post("/v1/cosign", content=body, headers=MP)
    assert (resp.status_code, resp.json()["code"]) == (status, code)
