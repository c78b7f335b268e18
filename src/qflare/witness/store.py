"""A witness's directory: its key (0600), its public key file, its state, its lock.

Layout (the directory is created 0700)::

    witness.seed    ML-DSA-65 key seed                             0600, never leaves the host
    witness.pub     public key file (``mldsa65:<base64>``)          give it to servers and nodes
    state.msgpack   pinned ledger key fingerprint + last cosigned head   written atomically
    witness.lock    held (flock) while ``qflare witness serve`` runs
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import msgspec

from qflare.crypto import MlDsa65Signer, Rng, SecretBytes
from qflare.ledger import WitnessState, encode_public_key, key_fingerprint
from qflare.store.files import write_atomic

SEED_FILE: Final = "witness.seed"
PUBLIC_FILE: Final = "witness.pub"
STATE_FILE: Final = "state.msgpack"
LOCK_FILE: Final = "witness.lock"
_SEED_BYTES: Final = 32


class WitnessDirError(Exception):
    """The witness directory is missing, unsafe, malformed, or watches another ledger."""


class WitnessDir:
    """Files of one witness.

    Args:
        root: The directory.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def public_key_file(self) -> Path:
        """The public key file to hand out."""
        return self.root / PUBLIC_FILE

    @classmethod
    def init(cls, root: Path, rng: Rng) -> tuple[WitnessDir, bytes]:
        """Create the directory, a fresh key (seed 0600) and its public key file.

        Returns:
            The directory and the new public key.

        Raises:
            WitnessDirError: a witness key exists there already.
        """
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        seed_path = root / SEED_FILE
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(seed_path, flags, 0o600)
        except FileExistsError as exc:
            raise WitnessDirError(f"{seed_path} exists: this directory has a witness key") from exc
        signer = MlDsa65Signer.generate(rng)
        with os.fdopen(fd, "wb") as fh:
            fh.write(signer.seed().reveal())
            fh.flush()
            os.fsync(fh.fileno())
        text = encode_public_key(signer.public_key, "ledger witness")
        write_atomic(root / PUBLIC_FILE, text.encode(), 0o644)
        return cls(root), signer.public_key

    def signer(self) -> MlDsa65Signer:
        """The witness key, refusing a seed file others can read or another user owns.

        Raises:
            WitnessDirError: missing, unsafe or malformed seed file.
        """
        path = self.root / SEED_FILE
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError as exc:
            raise WitnessDirError(f"{path} is missing: run `qflare witness init` first") from exc
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise WitnessDirError(f"{path} must not be accessible by others (chmod 600 {path})")
            if info.st_uid != os.geteuid():
                raise WitnessDirError(f"{path} is owned by another user")
            seed = fh.read()
        if len(seed) != _SEED_BYTES:
            raise WitnessDirError(f"{path} is not a {_SEED_BYTES}-byte ML-DSA-65 seed")
        return MlDsa65Signer(SecretBytes(seed))

    def saved_state(self) -> WitnessState | None:
        """The saved state, if any.

        Raises:
            WitnessDirError: the state file is malformed.
        """
        path = self.root / STATE_FILE
        if not path.exists():
            return None
        try:
            return msgspec.msgpack.decode(path.read_bytes(), type=WitnessState)
        except msgspec.DecodeError as exc:
            raise WitnessDirError(f"{path} is malformed: {exc}") from exc

    def load_state(self, server_key: bytes) -> WitnessState:
        """The saved state, or a fresh one pinning ``server_key`` (saved at once).

        Raises:
            WitnessDirError: the state file is malformed or pins another ledger key.
        """
        state = self.saved_state()
        if state is None:
            state = WitnessState.initial(server_key)
            self.save_state(state)
            return state
        if state.origin != key_fingerprint(server_key):
            raise WitnessDirError(
                f"this witness watches the ledger key sha256 {state.origin.hex()[:16]}…, "
                f"not sha256 {key_fingerprint(server_key).hex()[:16]}… (check --server-key)"
            )
        return state

    def save_state(self, state: WitnessState) -> None:
        """Persist ``state`` atomically and durably (temp file, fsync, rename)."""
        write_atomic(self.root / STATE_FILE, msgspec.msgpack.encode(state), 0o600)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory's lock: one serving process per witness.

        Raises:
            WitnessDirError: another process holds it.
        """
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise WitnessDirError(f"another process serves the witness in {self.root}") from exc
            yield
        finally:
            os.close(fd)
