"""In-process tests of the enclave building blocks (no enclave process)."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from qflare.crypto import DeterministicRng, SecretBytes, SignatureScheme
from qflare.tee import wire
from qflare.tee.errors import (
    CounterReuse,
    EnclaveError,
    SecureStorageError,
    UnknownCommand,
    UnsealError,
)
from qflare.tee.keyvault import GENERATE, KEYVAULT, SIGN, GenerateKey, KeyInfo
from qflare.tee.measurement import reference_measurement
from qflare.tee.rpmb import SimulatedRpmb
from qflare.tee.sealing import SealedHeader, SealOwner, open_blob, read_header, seal_blob
from qflare.tee.storage import load_or_create_huk
from qflare.tee.ta import Command, CommandTable, TaManifest

MEASUREMENT = b"m" * 32
HUK = SecretBytes(b"h" * 32)


def _header(counter: int = 1, *, owner: SealOwner = SealOwner.HOST) -> SealedHeader:
    return SealedHeader(
        owner=owner, label="state", measurement=MEASUREMENT, counter=counter, salt=b"s" * 16
    )


# --- simulated RPMB ------------------------------------------------------------------------


def test_rpmb_is_monotonic_and_persistent(tmp_path: Path) -> None:
    key = SecretBytes(b"k" * 32)
    rpmb = SimulatedRpmb(tmp_path / "rpmb.bin", key)
    assert rpmb.read("round") == 0
    assert rpmb.advance("round", 5) == 5
    for stale in (5, 4, 0):
        with pytest.raises(CounterReuse):
            rpmb.advance("round", stale)
    reopened = SimulatedRpmb(tmp_path / "rpmb.bin", key)
    assert reopened.read("round") == 5
    with pytest.raises(CounterReuse):
        reopened.advance("round", 5)
    assert os.stat(tmp_path / "rpmb.bin").st_mode & 0o777 == 0o600


def test_rpmb_refuses_forged_or_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "rpmb.bin"
    SimulatedRpmb(path, SecretBytes(b"k" * 32)).advance("round", 7)
    with pytest.raises(SecureStorageError, match="MAC"):
        SimulatedRpmb(path, SecretBytes(b"x" * 32))  # another device's key
    raw = bytearray(path.read_bytes())
    raw[raw.index(7)] = 1  # lower the stored value without fixing the MAC
    path.write_bytes(bytes(raw))
    with pytest.raises(SecureStorageError):
        SimulatedRpmb(path, SecretBytes(b"k" * 32))


def test_huk_file_is_private_and_exposure_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huk.bin"
    huk = load_or_create_huk(path, DeterministicRng(1))
    assert len(huk) == 32 and "redacted" in repr(huk)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_or_create_huk(path, DeterministicRng(2)) == huk  # not regenerated
    os.chmod(path, 0o644)
    with pytest.raises(SecureStorageError, match="0600"):
        load_or_create_huk(path, DeterministicRng(1))


# --- sealing ---------------------------------------------------------------------------------


def test_seal_round_trip_and_header_is_readable() -> None:
    blob = seal_blob(HUK, _header(3), b"secret state")
    assert b"secret state" not in blob
    assert read_header(blob).counter == 3
    header, plain = open_blob(
        HUK, blob, measurement=MEASUREMENT, owner=SealOwner.HOST, label="state"
    )
    assert plain.reveal() == b"secret state" and header.counter == 3


@pytest.mark.parametrize("position", [-1, -20, 10])
def test_any_flipped_byte_is_rejected(position: int) -> None:
    blob = bytearray(seal_blob(HUK, _header(), b"secret state"))
    blob[position] ^= 0x01
    with pytest.raises(UnsealError):
        open_blob(HUK, bytes(blob), measurement=MEASUREMENT, owner=SealOwner.HOST, label="state")


def test_rewritten_header_fails_authentication() -> None:
    blob = seal_blob(HUK, _header(1), b"secret state")
    outer = msgspec.msgpack.decode(blob)
    outer[0] = msgspec.msgpack.encode(_header(9))  # claim to be newer
    with pytest.raises(UnsealError, match="authentication"):
        open_blob(
            HUK,
            msgspec.msgpack.encode(outer),
            measurement=MEASUREMENT,
            owner=SealOwner.HOST,
            label="state",
        )


def test_blob_is_bound_to_measurement_owner_label_and_huk() -> None:
    blob = seal_blob(HUK, _header(owner=SealOwner.TA), b"ta secret")
    bad = [
        dict(huk=HUK, measurement=b"x" * 32, owner=SealOwner.TA, label="state"),
        dict(huk=HUK, measurement=MEASUREMENT, owner=SealOwner.HOST, label="state"),
        dict(huk=HUK, measurement=MEASUREMENT, owner=SealOwner.TA, label="other"),
        dict(
            huk=SecretBytes(b"z" * 32), measurement=MEASUREMENT, owner=SealOwner.TA, label="state"
        ),
    ]
    for args in bad:
        with pytest.raises(UnsealError):
            open_blob(
                args["huk"],  # type: ignore[arg-type]
                blob,
                measurement=args["measurement"],  # type: ignore[arg-type]
                owner=args["owner"],  # type: ignore[arg-type]
                label=args["label"],  # type: ignore[arg-type]
            )
    with pytest.raises(UnsealError, match="malformed"):
        read_header(b"\x00not a blob")


# --- wire, measurement, command tables --------------------------------------------------------


def test_wire_refuses_unknown_version_and_types() -> None:
    frame = wire.encode(wire.CounterReadRequest(name="round", version=2))
    with pytest.raises(ValueError, match="version"):
        wire.decode_request(frame)
    with pytest.raises(msgspec.ValidationError):
        wire.decode_request(wire.encode(wire.OkResponse()))  # a response is not a request


def test_measurement_depends_on_config_and_identity() -> None:
    base = reference_measurement(KEYVAULT)
    assert len(base) == 32 and base == reference_measurement(KEYVAULT)
    assert base != reference_measurement(KEYVAULT, b"config")
    renamed = TaManifest("other.vault", 1, KEYVAULT.module, KEYVAULT.commands)
    assert base != reference_measurement(renamed)


def test_command_table_registration_rules() -> None:
    table = CommandTable(KEYVAULT)
    impostor = Command(GENERATE.id, "impostor", GenerateKey, KeyInfo)
    with pytest.raises(ValueError, match="not the manifest"):
        table.register(
            impostor, lambda p: KeyInfo(key_id=0, kind=p.kind, public_key=b"", sealed=b"")
        )
    table.register(GENERATE, lambda p: KeyInfo(key_id=1, kind=p.kind, public_key=b"", sealed=b""))
    with pytest.raises(ValueError, match="twice"):
        table.register(
            GENERATE, lambda p: KeyInfo(key_id=1, kind=p.kind, public_key=b"", sealed=b"")
        )
    with pytest.raises(EnclaveError, match="lacks handlers"):
        table.check_complete()
    with pytest.raises(UnknownCommand):
        table.dispatch(SIGN.id, b"")
    with pytest.raises(UnknownCommand):
        KEYVAULT.command(99)
    with pytest.raises(EnclaveError, match="malformed"):
        table.dispatch(GENERATE.id, b"\xc1")
    result = table.dispatch(GENERATE.id, msgspec.msgpack.encode(GenerateKey(kind="ed25519")))  # type: ignore[arg-type]
    assert msgspec.msgpack.decode(result, type=KeyInfo).key_id == 1


def test_manifest_refuses_duplicate_ids_and_bad_names() -> None:
    with pytest.raises(ValueError, match="twice"):
        TaManifest("x", 1, "m", (GENERATE, Command(GENERATE.id, "dup", GenerateKey, KeyInfo)))
    with pytest.raises(ValueError, match="'/'"):
        TaManifest("a/b", 1, "m", ())


def test_platform_scheme_is_a_wire_enum() -> None:
    boot = wire.BootRequest(
        state_dir="/x",
        ta_name="t",
        ta_version=1,
        ta_module="m",
        measured_modules=(),
        config=b"",
        platform_id="p",
        platform_scheme=SignatureScheme.ED25519,
    )
    decoded = wire.decode_request(wire.encode(boot))
    assert isinstance(decoded, wire.BootRequest)
    assert decoded.platform_scheme is SignatureScheme.ED25519
