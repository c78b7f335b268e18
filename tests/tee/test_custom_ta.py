"""Registering a TA from outside qflare, and what a failing TA lets cross the channel."""

from __future__ import annotations

from pathlib import Path

import pytest

from qflare.tee import (
    EnclaveCrashed,
    EnclaveError,
    RecordingTap,
    SimEnclave,
    TrustedAppError,
    call,
    reference_measurement,
)
from qflare.tee.keyvault import KeyKind, SealedKey
from tests.tee.probe_ta import (
    ECHO_CONFIG,
    FAIL,
    HANG,
    PROBE,
    SEALED_STATE,
    SECRET_MESSAGE,
    WRONG_TYPE,
    Probe,
)


def test_custom_ta_runs_with_its_config_and_services(tmp_path: Path) -> None:
    tap = RecordingTap()
    with SimEnclave.start(tmp_path, PROBE, config=b"cfg", tap=tap) as enclave:
        echoed = call(enclave, ECHO_CONFIG, Probe()).data
        assert echoed == b"cfg" + reference_measurement(PROBE, b"cfg")
        assert [call(enclave, SEALED_STATE, Probe(data=b"ab")).counter for _ in range(3)] == [
            1,
            2,
            3,
        ]
        assert enclave.counter_read("steps") == 3  # the host sees the TA's counters
        with pytest.raises(TrustedAppError) as excinfo:
            call(enclave, FAIL, Probe())
        assert "RuntimeError" in str(excinfo.value)
        assert SECRET_MESSAGE not in str(excinfo.value)
        assert not tap.saw(SECRET_MESSAGE.encode())
        with pytest.raises(EnclaveError, match="wrong type"):
            call(enclave, WRONG_TYPE, Probe())
        assert call(enclave, SEALED_STATE, Probe(data=b"c")).data == (7).to_bytes(4, "big")


def test_hung_ta_times_out_and_is_killed(tmp_path: Path) -> None:
    with SimEnclave.start(tmp_path, PROBE, timeout_s=1.0) as enclave:
        with pytest.raises(EnclaveCrashed, match="did not answer"):
            call(enclave, HANG, Probe())
        assert not enclave.alive
        with pytest.raises(EnclaveCrashed):
            call(enclave, ECHO_CONFIG, Probe())


def test_sealed_key_record_has_redacted_repr() -> None:
    record = SealedKey(key_id=1, kind=KeyKind.X25519, secret=b"\x42" * 32)
    assert "redacted" in repr(record) and "4242" not in repr(record) and "BBBB" not in repr(record)
