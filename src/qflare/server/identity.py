"""The server's long-term ML-DSA-65 identity, kept as a 0600 seed file in the state directory."""

from __future__ import annotations

import os
from pathlib import Path

from qflare.crypto import MlDsa65Signer, Rng, SecretBytes


def load_or_create_identity(state_dir: Path, rng: Rng) -> MlDsa65Signer:
    """Load the server key seed, or create it (0600) on first start."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / "server-identity.seed"
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise PermissionError(f"{path} must not be readable by group or others (chmod 600)")
        return MlDsa65Signer(SecretBytes(path.read_bytes()))
    signer = MlDsa65Signer.generate(rng)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(signer.seed().reveal())
    return signer
