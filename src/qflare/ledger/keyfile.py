"""Public key files of the ledger's parties: the server's ledger key and the witnesses' keys.

A key file is text: comment lines starting with ``#`` and exactly one line
``mldsa65:<base64 of the 1952-byte ML-DSA-65 public key>``. Operators copy these files between
machines (the witness pins the server's key; servers, nodes and auditors pin witness keys), so the
format is short, greppable and carries the fingerprint in a comment for eyeballing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Final

from qflare.crypto.pq import MLDSA65_PUBLIC_BYTES
from qflare.ledger.errors import InvalidKeyFile

KEY_PREFIX: Final = "mldsa65:"


def key_fingerprint(public_key: bytes) -> bytes:
    """SHA-256 of a public key: how cosignatures name witnesses and the ledger they vouch for."""
    return hashlib.sha256(public_key).digest()


def encode_public_key(public_key: bytes, role: str) -> str:
    """The text of a key file for ``public_key`` (``role``: e.g. ``"ledger witness"``).

    Raises:
        InvalidKeyFile: the key is not an ML-DSA-65 public key.
    """
    _check_length(public_key)
    return (
        f"# QFLARE {role} public key (ML-DSA-65)\n"
        f"# sha256 {key_fingerprint(public_key).hex()}\n"
        f"{KEY_PREFIX}{base64.b64encode(public_key).decode()}\n"
    )


def decode_public_key(text: str) -> bytes:
    """The public key in a key file's text.

    Raises:
        InvalidKeyFile: no key line, several, bad base64, or the wrong length.
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1 or not lines[0].startswith(KEY_PREFIX):
        raise InvalidKeyFile(f"expected exactly one line '{KEY_PREFIX}<base64>'")
    try:
        key = base64.b64decode(lines[0].removeprefix(KEY_PREFIX), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidKeyFile("the key is not valid base64") from exc
    _check_length(key)
    return key


def _check_length(public_key: bytes) -> None:
    if len(public_key) != MLDSA65_PUBLIC_BYTES:
        raise InvalidKeyFile(
            f"an ML-DSA-65 public key has {MLDSA65_PUBLIC_BYTES} bytes, not {len(public_key)}"
        )
