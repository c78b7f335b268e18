"""The authority's key pair: ``authority.key`` (seed, 0600, kept by the operator) and ``authority.pub``.

The same seed derives every enrollment token's secret (HKDF over the token id), so the authority
stores no token secret: whoever reads its database learns nothing that enrolls a device.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from qflare.crypto import Label, MlDsa65Signer, NoPickle, Rng, SecretBytes, hkdf
from qflare.protocol.identity import AuthorityKey, encode_authority_key

__all__ = [
    "AUTHORITY_KEY_FILE",
    "AUTHORITY_PUB_FILE",
    "AuthorityKeys",
    "init_authority",
    "load_authority",
]

AUTHORITY_KEY_FILE: Final = "authority.key"
AUTHORITY_PUB_FILE: Final = "authority.pub"
_SEED_BYTES: Final = 32
_TOKEN_SECRET: Final = "authority/token-secret"  # noqa: S105 - an HKDF label, not a secret


class AuthorityKeys(NoPickle):
    """The authority's signing key, its public key, and the token secrets it derives.

    Args:
        signer: The ML-DSA-65 key loaded from ``authority.key``.
    """

    def __init__(self, signer: MlDsa65Signer) -> None:
        self.signer = signer
        self.public = AuthorityKey(public_key=signer.public_key)
        self._token_root = hkdf(signer.seed(), Label(_TOKEN_SECRET))

    def token_secret(self, token_id: str) -> bytes:
        """The 32-byte secret of token ``token_id`` (HKDF over the id; never stored)."""
        return hkdf(self._token_root, Label(_TOKEN_SECRET, extra=token_id.encode())).reveal()

    def __repr__(self) -> str:
        return f"AuthorityKeys({self.public.fingerprint.hex()[:16]}, <redacted>)"


def init_authority(directory: Path, rng: Rng) -> AuthorityKeys:
    """Make a new authority key pair in ``directory`` (created 0700).

    Raises:
        FileExistsError: ``directory`` already holds an authority key.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path = directory / AUTHORITY_KEY_FILE
    if key_path.exists():
        raise FileExistsError(f"{key_path} exists: refusing to replace an authority key")
    signer = MlDsa65Signer.generate(rng)
    fd = os.open(
        key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600
    )
    with os.fdopen(fd, "wb") as fh:
        fh.write(signer.seed().reveal())
        fh.flush()
        os.fsync(fh.fileno())
    keys = AuthorityKeys(signer)
    (directory / AUTHORITY_PUB_FILE).write_bytes(encode_authority_key(keys.public))
    return keys


def load_authority(directory: Path) -> AuthorityKeys:
    """Load the authority key from ``directory``.

    Raises:
        FileNotFoundError: no ``authority.key`` (run ``qflare authority init``).
        PermissionError: the key file is readable by group or others.
        ValueError: the key file is malformed.
    """
    path = directory / AUTHORITY_KEY_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: run `qflare authority init --dir {directory}`"
        )
    if path.stat().st_mode & 0o077:
        raise PermissionError(f"{path} must not be readable by group or others (chmod 600 {path})")
    seed = path.read_bytes()
    if len(seed) != _SEED_BYTES:
        raise ValueError(f"{path} is not an authority key seed ({_SEED_BYTES} bytes)")
    return AuthorityKeys(MlDsa65Signer(SecretBytes(seed)))
