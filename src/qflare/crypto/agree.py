"""X25519 key agreement and HKDF-SHA256 key derivation bound to explicit labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from qflare.crypto.errors import KeyFormatError
from qflare.crypto.rng import Rng
from qflare.crypto.secret import NoPickle, SecretBytes

X25519_KEY_BYTES = 32
_DOMAIN = b"qflare/v1"


@dataclass(frozen=True, slots=True)
class Label:
    """Context that a derived key is bound to.

    Attributes:
        purpose: What the key is for, e.g. ``"secagg/mask"`` or ``"secagg/share-enc"``.
        session: Session or federation identifier.
        round_id: Protocol round (or epoch) number.
        pair: Ordered pair of party ids, or ``()`` when not pairwise.
        extra: Further context bytes (e.g. a direction marker).
    """

    purpose: str
    session: str = ""
    round_id: int = 0
    pair: tuple[int, ...] = ()
    extra: bytes = b""

    def encode(self) -> bytes:
        """Unambiguous, length-prefixed encoding used as HKDF ``info``."""
        parts = [
            _DOMAIN,
            self.purpose.encode(),
            self.session.encode(),
            self.round_id.to_bytes(8, "big"),
            b"".join(p.to_bytes(8, "big", signed=True) for p in self.pair),
            self.extra,
        ]
        return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def hkdf(ikm: bytes | SecretBytes, label: Label, length: int = 32) -> SecretBytes:
    """Derive ``length`` bytes from ``ikm`` with HKDF-SHA256 bound to ``label``."""
    raw = ikm.reveal() if isinstance(ikm, SecretBytes) else ikm
    kdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=label.encode())
    return SecretBytes(kdf.derive(raw))


class X25519KeyPair(NoPickle):
    """An X25519 key pair whose private half never appears in ``repr``.

    Args:
        private: The 32-byte private scalar.
    """

    __slots__ = ("_private", "public")

    def __init__(self, private: SecretBytes) -> None:
        if len(private) != X25519_KEY_BYTES:
            raise KeyFormatError("X25519 private key must be 32 bytes")
        self._private = X25519PrivateKey.from_private_bytes(private.reveal())
        self.public: bytes = self._private.public_key().public_bytes_raw()

    @classmethod
    def generate(cls, rng: Rng) -> X25519KeyPair:
        """Make a key pair from injected randomness."""
        return cls(SecretBytes(rng.random_bytes(X25519_KEY_BYTES)))

    def private_bytes(self) -> SecretBytes:
        """The private scalar, for secret sharing."""
        return SecretBytes(self._private.private_bytes_raw())

    def agree(self, peer_public: bytes, label: Label, length: int = 32) -> SecretBytes:
        """Diffie-Hellman with ``peer_public``, then HKDF bound to ``label``."""
        return x25519_agree(self, peer_public, label, length)

    def __repr__(self) -> str:
        return f"X25519KeyPair(public={self.public.hex()[:16]}…, private=<redacted>)"


_P25519 = 2**255 - 19
_SMALL_ORDER_U = frozenset(
    {
        0,
        1,
        _P25519 - 1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
    }
)
"""u-coordinates (mod p) of the points of order 1, 2, 4 and 8 on Curve25519 (libsodium's list)."""


def x25519_public_is_valid(public: bytes) -> bool:
    """Whether ``public`` is a usable X25519 public key: 32 bytes and not of small order.

    A small-order point makes every agreement with it all-zero (a peer could force a known
    shared secret); non-canonical encodings of those points (``u >= p``, the top bit set) are
    caught too. Costs a few integer operations, no scalar multiplication.
    """
    if len(public) != X25519_KEY_BYTES:
        return False
    u = int.from_bytes(public, "little") & ((1 << 255) - 1)
    return u % _P25519 not in _SMALL_ORDER_U


def x25519_agree(
    own: X25519KeyPair | SecretBytes, peer_public: bytes, label: Label, length: int = 32
) -> SecretBytes:
    """Agree on a key with ``peer_public`` and derive ``length`` bytes bound to ``label``.

    Raises:
        KeyFormatError: the peer key is malformed or yields the all-zero shared secret.
    """
    return x25519_agree_many(own, peer_public, (label,), length)[0]


def x25519_agree_many(
    own: X25519KeyPair | SecretBytes, peer_public: bytes, labels: Sequence[Label], length: int = 32
) -> list[SecretBytes]:
    """One Diffie-Hellman with ``peer_public``, then one HKDF output per label.

    Raises:
        KeyFormatError: the peer key is malformed or yields the all-zero shared secret.
    """
    key = own if isinstance(own, X25519KeyPair) else X25519KeyPair(own)
    if len(peer_public) != X25519_KEY_BYTES:
        raise KeyFormatError("X25519 public key must be 32 bytes")
    try:
        shared = key._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # all-zero output: small-order point
        raise KeyFormatError("X25519 agreement produced the all-zero secret") from exc
    return [hkdf(shared, label, length) for label in labels]
