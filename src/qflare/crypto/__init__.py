"""Cryptographic recipes. The only package in QFLARE that imports ``cryptography``.

Everything here is intent-level: callers never choose nonces, modes or paddings, every derived key
or ciphertext is bound to an explicit context, and every check raises on failure.
"""

from qflare.crypto.aead import Aead
from qflare.crypto.agree import (
    Label,
    X25519KeyPair,
    hkdf,
    x25519_agree,
    x25519_agree_many,
    x25519_public_is_valid,
)
from qflare.crypto.errors import (
    CryptoError,
    DecryptionError,
    InvalidSignature,
    KeyFormatError,
    ShamirError,
)
from qflare.crypto.pq import (
    Ed25519Signer,
    HybridKem,
    HybridSigner,
    MlDsa65Signer,
    MlKem768,
    SignatureScheme,
    Signer,
    make_signer,
    verify_signature,
)
from qflare.crypto.prg import MaskPrg, RingVector, ring_dtype
from qflare.crypto.rng import DeterministicRng, Rng, SystemRng
from qflare.crypto.secret import NoPickle, SecretBytes
from qflare.crypto.shamir import PRIME, Shamir, lagrange_at_zero

__all__ = [
    "PRIME",
    "Aead",
    "CryptoError",
    "DecryptionError",
    "DeterministicRng",
    "Ed25519Signer",
    "HybridKem",
    "HybridSigner",
    "InvalidSignature",
    "KeyFormatError",
    "Label",
    "MaskPrg",
    "MlDsa65Signer",
    "MlKem768",
    "NoPickle",
    "RingVector",
    "Rng",
    "SecretBytes",
    "Shamir",
    "ShamirError",
    "SignatureScheme",
    "Signer",
    "SystemRng",
    "X25519KeyPair",
    "hkdf",
    "lagrange_at_zero",
    "make_signer",
    "ring_dtype",
    "verify_signature",
    "x25519_agree",
    "x25519_agree_many",
    "x25519_public_is_valid",
]
