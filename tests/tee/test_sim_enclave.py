"""The simulated enclave process: counters, sealing, rollback, restarts and shutdown."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import msgspec
import psutil
import pytest

from qflare.tee import (
    CounterReuse,
    EnclaveCrashed,
    EnclaveError,
    RollbackDetected,
    SimEnclave,
    UnknownCommand,
    UnsealError,
    reference_measurement,
)
from qflare.tee.keyvault import KEYVAULT, GenerateKey, KeyKind, SignMessage
from qflare.tee.storage import StateLayout


@pytest.fixture(scope="module")
def enclave(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimEnclave]:
    with SimEnclave.start(tmp_path_factory.mktemp("device"), KEYVAULT) as running:
        yield running


def _start(state_dir: Path, config: bytes = b"") -> SimEnclave:
    return SimEnclave.start(state_dir, KEYVAULT, config=config)


def _children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


# --- one long-lived process --------------------------------------------------------------------


def test_runs_in_a_separate_process_with_the_reference_measurement(enclave: SimEnclave) -> None:
    assert enclave.pid != os.getpid() and enclave.alive
    assert enclave.measurement == reference_measurement(KEYVAULT)
    assert "simulated" in repr(enclave)


def test_counters_only_move_forward(enclave: SimEnclave) -> None:
    assert enclave.counter_read("round") == 0
    assert enclave.counter_advance("round", 1) == 1
    assert enclave.counter_advance("round", 10) == 10
    for reused in (10, 9, 1):
        with pytest.raises(CounterReuse):
            enclave.counter_advance("round", reused)
    assert enclave.counter_read("round") == 10
    with pytest.raises(EnclaveError):
        enclave.counter_advance("", 1)


def test_only_the_latest_blob_of_a_label_unseals(enclave: SimEnclave) -> None:
    first = enclave.seal(b"state v1", label="state")
    assert enclave.unseal(first, label="state") == b"state v1"
    second = enclave.seal(b"state v2", label="state")
    with pytest.raises(RollbackDetected, match="latest"):
        enclave.unseal(first, label="state")
    assert enclave.unseal(second, label="state") == b"state v2"
    other = enclave.seal(b"other", label="other")  # labels version independently
    assert enclave.unseal(second, label="state") == b"state v2"
    assert enclave.unseal(other, label="other") == b"other"


def test_tampered_or_mislabelled_blob_is_refused(enclave: SimEnclave) -> None:
    blob = bytearray(enclave.seal(b"payload", label="tamper"))
    with pytest.raises(UnsealError):
        enclave.unseal(bytes(blob), label="not-tamper")
    blob[-3] ^= 0x80
    with pytest.raises(UnsealError, match="authentication"):
        enclave.unseal(bytes(blob), label="tamper")
    with pytest.raises(UnsealError, match="malformed"):
        enclave.unseal(b"garbage", label="tamper")


def test_unknown_commands_and_wrong_parameter_types(enclave: SimEnclave) -> None:
    with pytest.raises(UnknownCommand):
        enclave.invoke(99, GenerateKey(kind=KeyKind.X25519))
    with pytest.raises(TypeError):
        enclave.invoke(1, SignMessage(key_id=1, message=b"", context=b""))


def test_enclave_survives_a_failing_request(enclave: SimEnclave) -> None:
    with pytest.raises(EnclaveError, match="64 bytes"):
        enclave.evidence(b"short")
    assert enclave.counter_read("round") >= 0  # still answering


# --- restarts over the same state directory ---------------------------------------------------


def test_counter_reuse_is_refused_after_restart(tmp_path: Path) -> None:
    with _start(tmp_path) as first:
        first.counter_advance("round", 41)
        pid = first.pid
    with _start(tmp_path) as second:
        assert second.pid != pid
        assert second.counter_read("round") == 41
        with pytest.raises(CounterReuse):
            second.counter_advance("round", 41)
        assert second.counter_advance("round", 42) == 42


def test_rollback_detected_after_restart(tmp_path: Path) -> None:
    rpmb = StateLayout(tmp_path).rpmb_path
    with _start(tmp_path) as enclave:
        old = enclave.seal(b"round 1 state", label="state")
        old_counters = rpmb.read_bytes()
        new = enclave.seal(b"round 2 state", label="state")
    with _start(tmp_path) as enclave:  # an old blob replayed to a fresh process
        with pytest.raises(RollbackDetected):
            enclave.unseal(old, label="state")
        assert enclave.unseal(new, label="state") == b"round 2 state"
    rpmb.write_bytes(old_counters)  # an attacker restores the old counter file
    with _start(tmp_path) as enclave, pytest.raises(RollbackDetected, match="rolled back"):
        enclave.unseal(new, label="state")


def test_other_measurement_cannot_unseal(tmp_path: Path) -> None:
    with _start(tmp_path) as enclave:
        blob = enclave.seal(b"bound to the measurement", label="state")
    with _start(tmp_path, config=b"another configuration") as other:
        assert other.measurement != reference_measurement(KEYVAULT)
        with pytest.raises(UnsealError, match="measurement"):
            other.unseal(blob, label="state")


def test_forged_counter_file_stops_the_boot(tmp_path: Path) -> None:
    with _start(tmp_path) as enclave:
        enclave.counter_advance("round", 3)
    rpmb = StateLayout(tmp_path).rpmb_path
    rpmb.write_bytes(msgspec.msgpack.encode([b"\x81\xa6values\x80", b"0" * 32]))
    before = _children()
    with pytest.raises(EnclaveError, match=r"boot failed.*MAC"):
        _start(tmp_path)
    assert _children() <= before  # the failed enclave process was reaped


def test_huk_lives_in_a_private_file(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path)
    with _start(tmp_path):
        pass
    assert layout.huk_path.stat().st_mode & 0o777 == 0o600
    assert layout.secure_dir.stat().st_mode & 0o777 == 0o700
    os.chmod(layout.huk_path, 0o640)
    with pytest.raises(EnclaveError, match="0600"):
        _start(tmp_path)


# --- process lifecycle ---------------------------------------------------------------------------


def test_clean_shutdown_leaves_no_process(tmp_path: Path) -> None:
    enclave = _start(tmp_path)
    process = enclave._channel.process
    assert process.pid in _children()
    enclave.close()
    enclave.close()  # idempotent
    assert process.returncode == 0 and not enclave.alive
    assert process.pid not in _children()
    with pytest.raises(EnclaveCrashed, match="closed"):
        enclave.counter_read("round")


def test_killed_enclave_is_reported_not_hung(tmp_path: Path) -> None:
    with _start(tmp_path) as enclave:
        os.kill(enclave.pid, signal.SIGKILL)
        enclave._channel.process.wait(timeout=5)
        with pytest.raises(EnclaveCrashed):
            enclave.counter_read("round")
        assert not enclave.alive


def test_unknown_ta_module_fails_to_boot(tmp_path: Path) -> None:
    ghost = type(KEYVAULT)("ghost.ta", 1, "qflare.tee.no_such_module", ())
    with pytest.raises(EnclaveError, match="boot failed"):
        SimEnclave.start(tmp_path, ghost)
