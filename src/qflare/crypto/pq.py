"""Identity signatures (ML-DSA-65, Ed25519, hybrid) and ML-KEM-768 (+X25519 hybrid) KEM."""

from __future__ import annotations

import enum
from typing import Protocol

from cryptography.exceptions import InvalidSignature as _PycaInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PrivateKey, MLDSA65PublicKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey

from qflare.crypto.agree import Label, X25519KeyPair, hkdf, x25519_agree
from qflare.crypto.errors import InvalidSignature, KeyFormatError
from qflare.crypto.rng import Rng
from qflare.crypto.secret import NoPickle, SecretBytes

MLDSA65_PUBLIC_BYTES = 1952
MLDSA65_SIGNATURE_BYTES = 3309
ED25519_PUBLIC_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
MLKEM768_PUBLIC_BYTES = 1184
MLKEM768_CIPHERTEXT_BYTES = 1088


class SignatureScheme(enum.StrEnum):
    """Identity signature schemes a federation can choose."""

    MLDSA65 = "mldsa65"
    ED25519 = "ed25519"
    HYBRID = "hybrid"  # ML-DSA-65 and Ed25519; both must verify


class Signer(Protocol):
    """Something that signs with an identity key; the private key never leaves it."""

    scheme: SignatureScheme
    public_key: bytes

    def sign(self, message: bytes, *, context: bytes) -> bytes:
        """Sign ``message`` under the domain-separation ``context``."""
        ...


def _ed_message(message: bytes, context: bytes) -> bytes:
    return len(context).to_bytes(2, "big") + context + message


class MlDsa65Signer(NoPickle):
    """ML-DSA-65 (FIPS 204) identity key; context strings are native to the scheme."""

    scheme = SignatureScheme.MLDSA65

    def __init__(self, seed: SecretBytes) -> None:
        self._key = MLDSA65PrivateKey.from_seed_bytes(seed.reveal())
        self.public_key = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls, rng: Rng) -> MlDsa65Signer:
        """New key from 32 random seed bytes."""
        return cls(SecretBytes(rng.random_bytes(32)))

    def seed(self) -> SecretBytes:
        """The 32-byte seed from which the key is derived (for sealed storage)."""
        return SecretBytes(self._key.private_bytes_raw())

    def sign(self, message: bytes, *, context: bytes) -> bytes:
        """Sign with ML-DSA-65 using ``context`` (at most 255 bytes)."""
        return self._key.sign(message, context)

    def __repr__(self) -> str:
        return "MlDsa65Signer(<redacted>)"


class Ed25519Signer(NoPickle):
    """Ed25519 identity key (classical; context is length-prefixed into the message)."""

    scheme = SignatureScheme.ED25519

    def __init__(self, seed: SecretBytes) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(seed.reveal())
        self.public_key = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls, rng: Rng) -> Ed25519Signer:
        """New key from 32 random bytes."""
        return cls(SecretBytes(rng.random_bytes(32)))

    def sign(self, message: bytes, *, context: bytes) -> bytes:
        """Sign ``context || message`` (length-prefixed) with Ed25519."""
        return self._key.sign(_ed_message(message, context))

    def __repr__(self) -> str:
        return "Ed25519Signer(<redacted>)"


class HybridSigner(NoPickle):
    """ML-DSA-65 + Ed25519: secure while either scheme is unbroken."""

    scheme = SignatureScheme.HYBRID

    def __init__(self, pq: MlDsa65Signer, classic: Ed25519Signer) -> None:
        self._pq, self._classic = pq, classic
        self.public_key = pq.public_key + classic.public_key

    @classmethod
    def generate(cls, rng: Rng) -> HybridSigner:
        """New pair of keys from injected randomness."""
        return cls(MlDsa65Signer.generate(rng), Ed25519Signer.generate(rng))

    def sign(self, message: bytes, *, context: bytes) -> bytes:
        """Concatenate an ML-DSA-65 and an Ed25519 signature."""
        return self._pq.sign(message, context=context) + self._classic.sign(
            message, context=context
        )

    def __repr__(self) -> str:
        return "HybridSigner(<redacted>)"


def make_signer(scheme: SignatureScheme, rng: Rng) -> Signer:
    """Generate an identity signer of ``scheme``."""
    if scheme is SignatureScheme.MLDSA65:
        return MlDsa65Signer.generate(rng)
    if scheme is SignatureScheme.ED25519:
        return Ed25519Signer.generate(rng)
    return HybridSigner.generate(rng)


def _verify_mldsa(public_key: bytes, signature: bytes, message: bytes, context: bytes) -> None:
    if len(public_key) != MLDSA65_PUBLIC_BYTES:
        raise KeyFormatError("ML-DSA-65 public key must be 1952 bytes")
    MLDSA65PublicKey.from_public_bytes(public_key).verify(signature, message, context)


def _verify_ed(public_key: bytes, signature: bytes, message: bytes, context: bytes) -> None:
    if len(public_key) != ED25519_PUBLIC_BYTES:
        raise KeyFormatError("Ed25519 public key must be 32 bytes")
    Ed25519PublicKey.from_public_bytes(public_key).verify(signature, _ed_message(message, context))


def verify_signature(
    scheme: SignatureScheme, public_key: bytes, signature: bytes, message: bytes, *, context: bytes
) -> None:
    """Verify ``signature``; return nothing on success.

    Raises:
        InvalidSignature: the signature does not verify (or the key is malformed).
    """
    try:
        if scheme is SignatureScheme.MLDSA65:
            _verify_mldsa(public_key, signature, message, context)
        elif scheme is SignatureScheme.ED25519:
            _verify_ed(public_key, signature, message, context)
        else:
            split = MLDSA65_PUBLIC_BYTES
            if len(signature) != MLDSA65_SIGNATURE_BYTES + ED25519_SIGNATURE_BYTES:
                raise InvalidSignature("hybrid signature has the wrong length")
            _verify_mldsa(public_key[:split], signature[:MLDSA65_SIGNATURE_BYTES], message, context)
            _verify_ed(public_key[split:], signature[MLDSA65_SIGNATURE_BYTES:], message, context)
    except (_PycaInvalidSignature, KeyFormatError, ValueError) as exc:
        raise InvalidSignature(f"{scheme.value} signature does not verify") from exc


class MlKem768(NoPickle):
    """ML-KEM-768 (FIPS 203) decapsulation key."""

    def __init__(self, seed: SecretBytes) -> None:
        self._key = MLKEM768PrivateKey.from_seed_bytes(seed.reveal())
        self.public_key = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls, rng: Rng) -> MlKem768:
        """New key from a 64-byte random seed."""
        return cls(SecretBytes(rng.random_bytes(64)))

    @staticmethod
    def encapsulate(public_key: bytes) -> tuple[SecretBytes, bytes]:
        """Encapsulate to ``public_key``: returns (shared secret, ciphertext).

        Uses the library's internal CSPRNG; ML-KEM encapsulation takes no injected randomness.
        """
        if len(public_key) != MLKEM768_PUBLIC_BYTES:
            raise KeyFormatError("ML-KEM-768 public key must be 1184 bytes")
        shared, ct = MLKEM768PublicKey.from_public_bytes(public_key).encapsulate()
        return SecretBytes(shared), ct

    def decapsulate(self, ciphertext: bytes) -> SecretBytes:
        """Recover the shared secret (implicit rejection: a bad ciphertext gives a random one)."""
        if len(ciphertext) != MLKEM768_CIPHERTEXT_BYTES:
            raise KeyFormatError("ML-KEM-768 ciphertext must be 1088 bytes")
        return SecretBytes(self._key.decapsulate(ciphertext))

    def __repr__(self) -> str:
        return "MlKem768(<redacted>)"


class HybridKem(NoPickle):
    """ML-KEM-768 + X25519 with an X-Wing-style combiner (secure if either part holds)."""

    def __init__(self, kem: MlKem768, dh: X25519KeyPair) -> None:
        self._kem, self._dh = kem, dh
        self.public_key = kem.public_key + dh.public

    @classmethod
    def generate(cls, rng: Rng) -> HybridKem:
        """New hybrid decapsulation key."""
        return cls(MlKem768.generate(rng), X25519KeyPair.generate(rng))

    @staticmethod
    def _combine(kem_ss: SecretBytes, dh_ss: SecretBytes, ct: bytes, pk: bytes) -> SecretBytes:
        label = Label(purpose="hybrid-kem", extra=ct + pk)
        return hkdf(kem_ss.reveal() + dh_ss.reveal(), label)

    @staticmethod
    def encapsulate(public_key: bytes, rng: Rng) -> tuple[SecretBytes, bytes]:
        """Encapsulate to a hybrid public key: returns (shared secret, ciphertext)."""
        if len(public_key) != MLKEM768_PUBLIC_BYTES + 32:
            raise KeyFormatError("hybrid KEM public key has the wrong length")
        kem_ss, kem_ct = MlKem768.encapsulate(public_key[:MLKEM768_PUBLIC_BYTES])
        eph = X25519KeyPair.generate(rng)
        dh_ss = x25519_agree(eph, public_key[MLKEM768_PUBLIC_BYTES:], Label("hybrid-kem/dh"))
        ct = kem_ct + eph.public
        return HybridKem._combine(kem_ss, dh_ss, ct, public_key), ct

    def decapsulate(self, ciphertext: bytes) -> SecretBytes:
        """Recover the hybrid shared secret."""
        if len(ciphertext) != MLKEM768_CIPHERTEXT_BYTES + 32:
            raise KeyFormatError("hybrid KEM ciphertext has the wrong length")
        kem_ss = self._kem.decapsulate(ciphertext[:MLKEM768_CIPHERTEXT_BYTES])
        dh_ss = self._dh.agree(ciphertext[MLKEM768_CIPHERTEXT_BYTES:], Label("hybrid-kem/dh"))
        return self._combine(kem_ss, dh_ss, ciphertext, self.public_key)

    def __repr__(self) -> str:
        return "HybridKem(<redacted>)"
