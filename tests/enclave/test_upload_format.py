"""The upload format, sans enclave: every refusal has its own reason and nothing else escapes."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from qflare.crypto import DeterministicRng, HybridKem
from qflare.protocol.enclave import (
    DeviceKey,
    ExclusionReason,
    OpenedUpdate,
    RoundContext,
    SealedUpload,
    UploadRefused,
    decode_upload,
    encode_upload,
    open_update,
)
from tests.enclave.federation import DIM, SESSION, make_federation, resign, vectors

FED = make_federation(3, seed=b"format")
KEM = HybridKem.generate(DeterministicRng(b"kem"))
OTHER_KEM = HybridKem.generate(DeterministicRng(b"other kem"))
DEVICES = {d.device_id: DeviceKey(d.signer.scheme, d.signer.public_key) for d in FED.devices[:2]}
CTX = RoundContext(session=SESSION, round_id=7, dim=DIM, max_weight=100.0)


def _open(upload: SealedUpload | bytes) -> OpenedUpdate:
    decoded = decode_upload(upload if isinstance(upload, bytes) else encode_upload(upload))
    return open_update(decoded, ctx=CTX, kem=KEM, devices=DEVICES)


def _reason(upload: SealedUpload | bytes) -> ExclusionReason:
    with pytest.raises(UploadRefused) as info:
        _open(upload)
    return info.value.reason


def test_round_trip_is_exact_and_repr_hides_values() -> None:
    vec = vectors(1)[0]
    opened = _open(FED.devices[0].upload(KEM.public_key, 7, vec, weight=3.5))
    assert opened.device_id == "dev-0" and opened.weight == 3.5
    np.testing.assert_array_equal(opened.vector, vec)
    assert "redacted" in repr(opened) and str(float(vec[0])) not in repr(opened)


def test_the_ciphertext_hides_the_update() -> None:
    vec = vectors(1)[0]
    upload = FED.devices[0].upload(KEM.public_key, 7, vec)
    assert vec.tobytes() not in encode_upload(upload)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"session": "other"}, ExclusionReason.WRONG_SESSION),
        ({"round_id": 8}, ExclusionReason.WRONG_ROUND),
    ],
)
def test_context_mismatch(change: dict[str, object], reason: ExclusionReason) -> None:
    upload = FED.devices[0].upload(KEM.public_key, 7, vectors(1)[0])
    assert _reason(msgspec.structs.replace(upload, **change)) is reason


def test_other_enclave_key_unknown_device_and_malformed() -> None:
    vec = vectors(1)[0]
    assert _reason(FED.devices[0].upload(OTHER_KEM.public_key, 7, vec)) is ExclusionReason.WRONG_KEY
    assert _reason(FED.devices[2].upload(KEM.public_key, 7, vec)) is ExclusionReason.UNKNOWN_DEVICE
    assert _reason(b"\x93garbage") is ExclusionReason.MALFORMED
    bad_version = msgspec.structs.replace(FED.devices[0].upload(KEM.public_key, 7, vec), version=2)
    assert _reason(bad_version) is ExclusionReason.MALFORMED


def test_tampering_and_impersonation_break_the_signature() -> None:
    good = FED.devices[0].upload(KEM.public_key, 7, vectors(1)[0])
    flipped = bytes([good.ciphertext[0] ^ 1]) + good.ciphertext[1:]
    assert (
        _reason(msgspec.structs.replace(good, ciphertext=flipped)) is ExclusionReason.BAD_SIGNATURE
    )
    # device 1 claims to be device 0: its own key signs, device 0's key is checked
    posing = resign(FED.devices[1], good)
    assert _reason(msgspec.structs.replace(decode_upload(posing), device_id="dev-0")) is (
        ExclusionReason.BAD_SIGNATURE
    )


def test_a_signed_but_undecryptable_upload() -> None:
    device = FED.devices[0]
    good = device.upload(KEM.public_key, 7, vectors(1)[0])
    junk = bytes(len(good.ciphertext))
    assert _reason(resign(device, good, ciphertext=junk)) is ExclusionReason.UNDECRYPTABLE
    short_kem = resign(device, good, kem_ciphertext=good.kem_ciphertext[:-1])
    assert _reason(short_kem) is ExclusionReason.UNDECRYPTABLE


def test_wrong_length_bad_weight_nan_and_infinity() -> None:
    device = FED.devices[0]
    assert _reason(device.upload(KEM.public_key, 7, vectors(1, DIM + 1)[0])) is (
        ExclusionReason.WRONG_LENGTH
    )
    heavy = device.upload(KEM.public_key, 7, vectors(1)[0], weight=101.0)
    assert _reason(heavy) is ExclusionReason.BAD_WEIGHT
    vec = vectors(1)[0]
    vec[3] = np.nan
    assert _reason(device.upload(KEM.public_key, 7, vec)) is ExclusionReason.NOT_A_NUMBER
    vec[3] = -np.inf
    assert _reason(device.upload(KEM.public_key, 7, vec)) is ExclusionReason.INFINITE


def test_sealing_refuses_a_bad_weight_or_shape() -> None:
    with pytest.raises(ValueError, match="weight"):
        FED.devices[0].upload(KEM.public_key, 7, vectors(1)[0], weight=0.0)
    with pytest.raises(ValueError, match="one-dimensional"):
        FED.devices[0].upload(KEM.public_key, 7, vectors(2))
