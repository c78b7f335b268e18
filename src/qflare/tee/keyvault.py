"""Key-vault trusted application: keys are made and used inside the enclave.

The example TA for the registration mechanism of :mod:`qflare.tee.ta`. It generates X25519,
ML-DSA-65 or Ed25519 keys from the enclave's CSPRNG, returns only public keys and a TA-sealed
copy (which the host cannot unseal), signs inside, and does X25519 agreement inside, handing
out only a ciphertext made with the agreed key. Key ids come from a monotonic counter, so they
are never reused, even across restarts.
"""

from __future__ import annotations

import enum

import msgspec

from qflare.crypto import (
    Aead,
    Ed25519Signer,
    Label,
    MlDsa65Signer,
    NoPickle,
    SecretBytes,
    Signer,
    X25519KeyPair,
)
from qflare.tee.errors import TrustedAppError
from qflare.tee.ta import Command, CommandTable, TaContext, TaManifest

_SALT_BYTES = 16
_NEXT_KEY_ID = "keyvault/key-id"


class KeyKind(enum.StrEnum):
    """Kinds of key the vault can hold."""

    X25519 = "x25519"
    MLDSA65 = "mldsa65"
    ED25519 = "ed25519"


class GenerateKey(msgspec.Struct, frozen=True, kw_only=True):
    """Make a new key of ``kind`` inside the enclave."""

    kind: KeyKind
    version: int = 1


class LoadKey(msgspec.Struct, frozen=True, kw_only=True):
    """Load a key sealed by an earlier :data:`GENERATE` (e.g. after a restart)."""

    key_id: int
    sealed: bytes
    version: int = 1


class KeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A key's id, kind, public key, and its TA-sealed private part (opaque to the host)."""

    key_id: int
    kind: KeyKind
    public_key: bytes
    sealed: bytes
    version: int = 1


class SignMessage(msgspec.Struct, frozen=True, kw_only=True):
    """Sign ``message`` under ``context`` with signing key ``key_id``."""

    key_id: int
    message: bytes
    context: bytes
    version: int = 1


class SignatureResult(msgspec.Struct, frozen=True, kw_only=True):
    """A signature."""

    signature: bytes
    version: int = 1


class AgreeEncrypt(msgspec.Struct, frozen=True, kw_only=True):
    """Agree with ``peer_public`` using X25519 key ``key_id`` and encrypt ``plaintext``.

    The AEAD key is ``HKDF(DH, Label(purpose, session, round_id, extra=salt))`` with a fresh
    salt, so the peer derives it with ``X25519KeyPair.agree`` and the returned salt.
    """

    key_id: int
    peer_public: bytes
    purpose: str
    plaintext: bytes
    aad: bytes
    session: str = ""
    round_id: int = 0
    version: int = 1


class AgreeCiphertext(msgspec.Struct, frozen=True, kw_only=True):
    """Salt of the derived key and the AES-256-GCM ciphertext (sequence 0)."""

    salt: bytes
    ciphertext: bytes
    version: int = 1


class SealedKey(msgspec.Struct, frozen=True, kw_only=True):
    """Plaintext layout of a sealed key (exists only inside the enclave)."""

    key_id: int
    kind: KeyKind
    secret: bytes

    def __repr__(self) -> str:
        return f"SealedKey(key_id={self.key_id}, kind={self.kind.value}, secret=<redacted>)"


GENERATE = Command(1, "generate", GenerateKey, KeyInfo)
LOAD = Command(2, "load", LoadKey, KeyInfo)
SIGN = Command(3, "sign", SignMessage, SignatureResult)
AGREE_ENCRYPT = Command(4, "agree-encrypt", AgreeEncrypt, AgreeCiphertext)
KEYVAULT = TaManifest(
    name="qflare.keyvault",
    version=1,
    module="qflare.tee.keyvault",
    commands=(GENERATE, LOAD, SIGN, AGREE_ENCRYPT),
)


def key_label(key_id: int) -> str:
    """Seal label of key ``key_id``."""
    return f"keyvault/key/{key_id}"


_Key = X25519KeyPair | MlDsa65Signer | Ed25519Signer


def _materialise(kind: KeyKind, secret: SecretBytes) -> _Key:
    if kind is KeyKind.X25519:
        return X25519KeyPair(secret)
    if kind is KeyKind.MLDSA65:
        return MlDsa65Signer(secret)
    return Ed25519Signer(secret)


def _public(key: _Key) -> bytes:
    return key.public if isinstance(key, X25519KeyPair) else key.public_key


class KeyVault(NoPickle):
    """The TA's state: loaded keys by id. Lives only in the enclave process.

    Args:
        ctx: Enclave services.
    """

    def __init__(self, ctx: TaContext) -> None:
        self._ctx = ctx
        self._keys: dict[int, _Key] = {}

    def _key(self, key_id: int) -> _Key:
        try:
            return self._keys[key_id]
        except KeyError:
            raise TrustedAppError(f"no key {key_id} is loaded") from None

    def _info(self, key_id: int, kind: KeyKind, sealed: bytes) -> KeyInfo:
        return KeyInfo(
            key_id=key_id, kind=kind, public_key=_public(self._key(key_id)), sealed=sealed
        )

    def generate(self, params: GenerateKey) -> KeyInfo:
        """Make a key, keep it loaded, and return its public key and sealed copy."""
        key_id = self._ctx.counter_advance(_NEXT_KEY_ID, self._ctx.counter_read(_NEXT_KEY_ID) + 1)
        secret = SecretBytes(self._ctx.rng.random_bytes(32))
        self._keys[key_id] = _materialise(params.kind, secret)
        record = SealedKey(key_id=key_id, kind=params.kind, secret=secret.reveal())
        sealed = self._ctx.seal(msgspec.msgpack.encode(record), label=key_label(key_id))
        return self._info(key_id, params.kind, sealed)

    def load(self, params: LoadKey) -> KeyInfo:
        """Unseal a key made earlier by this TA (refuses stale, foreign or tampered blobs)."""
        plain = self._ctx.unseal(params.sealed, label=key_label(params.key_id))
        record = msgspec.msgpack.decode(plain.reveal(), type=SealedKey)
        if record.key_id != params.key_id:
            raise TrustedAppError("sealed key has another id")
        self._keys[record.key_id] = _materialise(record.kind, SecretBytes(record.secret))
        return self._info(record.key_id, record.kind, params.sealed)

    def sign(self, params: SignMessage) -> SignatureResult:
        """Sign with a loaded ML-DSA-65 or Ed25519 key."""
        key = self._key(params.key_id)
        if isinstance(key, X25519KeyPair):
            raise TrustedAppError("an X25519 key cannot sign")
        signer: Signer = key
        return SignatureResult(signature=signer.sign(params.message, context=params.context))

    def agree_encrypt(self, params: AgreeEncrypt) -> AgreeCiphertext:
        """X25519 with the peer, HKDF to an AES key, encrypt; the key never leaves."""
        key = self._key(params.key_id)
        if not isinstance(key, X25519KeyPair):
            raise TrustedAppError("only X25519 keys agree")
        salt = self._ctx.rng.random_bytes(_SALT_BYTES)
        label = Label(params.purpose, params.session, params.round_id, extra=salt)
        aead = Aead(key.agree(params.peer_public, label))
        ciphertext = aead.seal(params.plaintext, aad=params.aad, sequence=0)
        return AgreeCiphertext(salt=salt, ciphertext=ciphertext)

    def public_keys(self) -> tuple[bytes, ...]:
        """Public halves of the loaded keys (the keys evidence may bind)."""
        return tuple(_public(key) for key in self._keys.values())


def build(ctx: TaContext) -> CommandTable:
    """Register the key vault's handlers (runs inside the enclave process)."""
    vault = KeyVault(ctx)
    table = CommandTable(KEYVAULT)
    table.register(GENERATE, vault.generate)
    table.register(LOAD, vault.load)
    table.register(SIGN, vault.sign)
    table.register(AGREE_ENCRYPT, vault.agree_encrypt)
    table.vouch_for(vault.public_keys)
    return table
