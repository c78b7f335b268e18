"""The state directory: 0600 key files, refusal of readable keys, enrollment record, registry."""

from __future__ import annotations

import json
import os
import stat

import pytest

from qflare.crypto import DeterministicRng, SignatureScheme, verify_signature
from qflare.node import (
    DeviceRecord,
    InsecureKeyFileError,
    NodeState,
    PersistentRoundRegistry,
    StateError,
)
from qflare.node.launch import RunOptions, run_node
from qflare.node.state import IDENTITY_FILE, KEM_FILE, ROUNDS_FILE
from qflare.protocol.errors import LocalProtocolError
from qflare.protocol.identity import AuthorityKey, encode_authority_key


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("scheme", list(SignatureScheme))
def test_create_writes_private_files_and_reloads_the_same_keys(tmp_path, scheme):
    old = os.umask(0)  # even a permissive umask must not widen key files
    try:
        state = NodeState.create(tmp_path / "node", scheme, DeterministicRng(1))
    finally:
        os.umask(old)
    assert _mode(state.root) == 0o700
    assert _mode(state.root / IDENTITY_FILE) == 0o600
    assert _mode(state.root / KEM_FILE) == 0o600

    signer, again = state.signer(), NodeState.open(state.root).signer()
    assert signer.public_key == again.public_key
    sig = again.sign(b"m", context=b"ctx")
    verify_signature(scheme, signer.public_key, sig, b"m", context=b"ctx")
    assert len(state.kem().public_key) == 1216
    assert state.kem().public_key == NodeState.open(state.root).kem().public_key


def test_create_keeps_existing_keys_and_refuses_another_scheme(tmp_path):
    root = tmp_path / "node"
    pk = NodeState.create(root, SignatureScheme.ED25519, DeterministicRng(1)).signer().public_key
    again = NodeState.create(root, SignatureScheme.ED25519, DeterministicRng(2))
    assert again.signer().public_key == pk
    with pytest.raises(StateError, match="ed25519"):
        NodeState.create(root, SignatureScheme.MLDSA65, DeterministicRng(3))


@pytest.mark.parametrize("name", [IDENTITY_FILE, KEM_FILE])
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_group_or_world_readable_keys_are_refused(tmp_path, name, mode):
    state = NodeState.create(tmp_path / "node", SignatureScheme.ED25519, DeterministicRng(1))
    (state.root / name).chmod(mode)
    with pytest.raises(InsecureKeyFileError, match="chmod 600"):
        state.signer() if name == IDENTITY_FILE else state.kem()


def test_symlinked_key_file_is_refused(tmp_path):
    state = NodeState.create(tmp_path / "node", SignatureScheme.ED25519, DeterministicRng(1))
    target = tmp_path / "elsewhere"
    (state.root / IDENTITY_FILE).rename(target)
    (state.root / IDENTITY_FILE).symlink_to(target)
    with pytest.raises(OSError):
        state.signer()


def test_truncated_key_file_is_refused(tmp_path):
    state = NodeState.create(tmp_path / "node", SignatureScheme.ED25519, DeterministicRng(1))
    path = state.root / IDENTITY_FILE
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(StateError, match="wrong length"):
        state.signer()


def test_open_without_a_node_and_without_enrollment(tmp_path):
    with pytest.raises(StateError, match="enroll"):
        NodeState.open(tmp_path)
    state = NodeState.create(tmp_path / "n", SignatureScheme.ED25519, DeterministicRng(1))
    assert state.device is None
    with pytest.raises(StateError, match="not enrolled"):
        state.require_device()


def test_device_record_round_trips_and_holds_no_secret(tmp_path):
    state = NodeState.create(tmp_path / "n", SignatureScheme.ED25519, DeterministicRng(1))
    authority = AuthorityKey(public_key=b"\xbb" * 1952)
    record = DeviceRecord(
        "dev",
        "https://fl.example:8443",
        b"\xaa" * 1952,
        "mldsa65",
        authority=encode_authority_key(authority),
        certificate=b"\xcc" * 40,
    )
    state.save_device(record)
    assert NodeState.open(state.root).device == record
    assert state.authority() == authority and state.certificate() == b"\xcc" * 40
    text = (state.root / "device.json").read_text()
    assert (state.root / IDENTITY_FILE).read_bytes().hex() not in text
    (state.root / "device.json").write_text("{}")
    with pytest.raises(StateError, match="malformed"):
        _ = state.device


def test_a_node_enrolled_before_authorities_is_told_to_re_enroll(tmp_path):
    state = NodeState.create(tmp_path / "n", SignatureScheme.ED25519, DeterministicRng(1))
    legacy = {
        "device_id": "dev",
        "server_url": "http://127.0.0.1:9",
        "server_public_key": "aa" * 1952,
        "server_scheme": "mldsa65",
    }
    (state.root / "device.json").write_text(json.dumps(legacy))
    assert state.require_device().device_id == "dev"
    for accessor in (state.authority, state.certificate):
        with pytest.raises(StateError, match="Enroll it again"):
            accessor()
    with pytest.raises(StateError, match="Enroll it again"):
        run_node(RunOptions(state_dir=state.root, insecure=True, trainer_spec="constant:1"))


def test_registry_claims_persist_and_reuse_is_refused(tmp_path):
    path = tmp_path / ROUNDS_FILE
    reg = PersistentRoundRegistry.load(path)
    reg.claim("qflare", 1, state="R0")
    reg.claim("qflare", 2, state="R0")
    assert _mode(path) == 0o600
    reloaded = PersistentRoundRegistry.load(path)
    assert reloaded.used() == {("qflare", 1), ("qflare", 2)}
    with pytest.raises(LocalProtocolError, match="already used"):
        reloaded.claim("qflare", 2, state="R0")
    reloaded.claim("other", 2, state="R0")
    path.write_text("not json")
    with pytest.raises(StateError):
        PersistentRoundRegistry.load(path)
