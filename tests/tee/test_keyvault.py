"""The key-vault trusted application: keys made and used inside, never on the channel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from qflare.crypto import (
    Aead,
    Label,
    SecretBytes,
    SignatureScheme,
    SystemRng,
    X25519KeyPair,
    verify_signature,
)
from qflare.tee import RecordingTap, SimEnclave, TrustedAppError, UnsealError, call
from qflare.tee.keyvault import (
    AGREE_ENCRYPT,
    GENERATE,
    KEYVAULT,
    LOAD,
    SIGN,
    AgreeEncrypt,
    GenerateKey,
    KeyInfo,
    KeyKind,
    LoadKey,
    SealedKey,
    SignMessage,
    key_label,
)
from qflare.tee.sealing import SealOwner, open_blob
from qflare.tee.storage import StateLayout


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vault")


@pytest.fixture(scope="module")
def tap() -> RecordingTap:
    return RecordingTap()


@pytest.fixture(scope="module")
def vault(state_dir: Path, tap: RecordingTap) -> Iterator[SimEnclave]:
    with SimEnclave.start(state_dir, KEYVAULT, tap=tap) as running:
        yield running


def _private_secret(state_dir: Path, vault: SimEnclave, info: KeyInfo) -> bytes:
    """Recover a key the way only someone holding the device's HUK could."""
    huk = SecretBytes(StateLayout(state_dir).huk_path.read_bytes())
    _, plain = open_blob(
        huk,
        info.sealed,
        measurement=vault.measurement,
        owner=SealOwner.TA,
        label=key_label(info.key_id),
    )
    return msgspec.msgpack.decode(plain.reveal(), type=SealedKey).secret


@pytest.mark.parametrize(
    ("kind", "scheme"),
    [(KeyKind.MLDSA65, SignatureScheme.MLDSA65), (KeyKind.ED25519, SignatureScheme.ED25519)],
)
def test_signs_inside_and_only_public_key_crosses(
    vault: SimEnclave, tap: RecordingTap, state_dir: Path, kind: KeyKind, scheme: SignatureScheme
) -> None:
    info = call(vault, GENERATE, GenerateKey(kind=kind))
    request = SignMessage(key_id=info.key_id, message=b"model update", context=b"qflare/test")
    signature = call(vault, SIGN, request).signature
    verify_signature(scheme, info.public_key, signature, b"model update", context=b"qflare/test")
    secret = _private_secret(state_dir, vault, info)
    assert tap.saw(info.public_key) and tap.saw(signature)
    assert not tap.saw(secret)


def test_agreement_key_and_x25519_private_key_never_cross(
    vault: SimEnclave, tap: RecordingTap, state_dir: Path
) -> None:
    info = call(vault, GENERATE, GenerateKey(kind=KeyKind.X25519))
    peer = X25519KeyPair.generate(SystemRng())
    request = AgreeEncrypt(
        key_id=info.key_id,
        peer_public=peer.public,
        purpose="secagg/share-enc",
        session="s1",
        round_id=7,
        plaintext=b"shamir share for peer",
        aad=b"round 7",
    )
    result = call(vault, AGREE_ENCRYPT, request)
    label = Label("secagg/share-enc", "s1", 7, extra=result.salt)
    shared = peer.agree(info.public_key, label)
    plain = Aead(shared).open(result.ciphertext, aad=b"round 7", sequence=0)
    assert plain == b"shamir share for peer"
    private = _private_secret(state_dir, vault, info)
    assert X25519KeyPair(SecretBytes(private)).public == info.public_key  # really the key
    assert tap.frames, "the tap saw nothing"
    for secret in (private, shared.reveal()):
        assert not tap.saw(secret[:16]) and not tap.saw(secret[16:])  # not even half of it


def test_host_cannot_unseal_a_ta_sealed_key(vault: SimEnclave) -> None:
    info = call(vault, GENERATE, GenerateKey(kind=KeyKind.ED25519))
    with pytest.raises(UnsealError, match="belongs to the ta"):
        vault.unseal(info.sealed, label=key_label(info.key_id))


def test_misuse_is_refused_inside(vault: SimEnclave) -> None:
    x = call(vault, GENERATE, GenerateKey(kind=KeyKind.X25519))
    with pytest.raises(TrustedAppError, match="cannot sign"):
        call(vault, SIGN, SignMessage(key_id=x.key_id, message=b"", context=b""))
    with pytest.raises(TrustedAppError, match="no key"):
        call(vault, SIGN, SignMessage(key_id=10_000, message=b"", context=b""))
    bad_peer = AgreeEncrypt(
        key_id=x.key_id, peer_public=b"\x00" * 31, purpose="p", plaintext=b"", aad=b""
    )
    with pytest.raises(TrustedAppError, match="32 bytes"):
        call(vault, AGREE_ENCRYPT, bad_peer)


def test_keys_survive_restart_and_ids_are_never_reused(tmp_path: Path) -> None:
    with SimEnclave.start(tmp_path, KEYVAULT) as first:
        info = call(first, GENERATE, GenerateKey(kind=KeyKind.MLDSA65))
    with SimEnclave.start(tmp_path, KEYVAULT) as second:
        with pytest.raises(TrustedAppError, match="no key"):
            call(second, SIGN, SignMessage(key_id=info.key_id, message=b"m", context=b""))
        loaded = call(second, LOAD, LoadKey(key_id=info.key_id, sealed=info.sealed))
        assert loaded.public_key == info.public_key
        sig = call(
            second, SIGN, SignMessage(key_id=info.key_id, message=b"m", context=b"")
        ).signature
        verify_signature(SignatureScheme.MLDSA65, info.public_key, sig, b"m", context=b"")
        fresh = call(second, GENERATE, GenerateKey(kind=KeyKind.X25519))
        assert fresh.key_id > info.key_id
        with pytest.raises(UnsealError):  # a sealed key cannot be loaded under another id
            call(second, LOAD, LoadKey(key_id=fresh.key_id, sealed=info.sealed))
