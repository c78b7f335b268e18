"""The node's state directory: private key seeds (0600), its enrollment, its used round ids.

Layout (the directory itself is created 0700)::

    identity.key   identity signature key seed          0600, never leaves the device
    kem.key        hybrid ML-KEM-768 + X25519 key seeds  0600, never leaves the device
    node.json      signature scheme of the identity key
    device.json    device id, server URL, pinned server key, pinned authority key and the
                   device certificate the authority issued (after enrollment)
    rounds.json    (session, round) pairs already used: a restarted node never reuses one
    ca.pem         optional copy of the CA certificate given at enrollment

Key files are created with ``os.open(..., 0o600)`` (never widened by the umask) and refused at
load time when the group or others can read them, or when another user owns them.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from qflare.crypto import (
    Ed25519Signer,
    HybridKem,
    HybridSigner,
    MlDsa65Signer,
    MlKem768,
    Rng,
    SecretBytes,
    SignatureScheme,
    Signer,
    X25519KeyPair,
)
from qflare.protocol.identity import AuthorityKey, IdentityError, decode_authority_key
from qflare.protocol.secagg import RoundRegistry

__all__ = [
    "DeviceRecord",
    "InsecureKeyFileError",
    "NodeState",
    "PersistentRoundRegistry",
    "StateError",
]

IDENTITY_FILE, KEM_FILE = "identity.key", "kem.key"
NODE_FILE, DEVICE_FILE, ROUNDS_FILE, CA_FILE = "node.json", "device.json", "rounds.json", "ca.pem"
_SEED_BYTES = {
    SignatureScheme.MLDSA65: 32,
    SignatureScheme.ED25519: 32,
    SignatureScheme.HYBRID: 64,
}
_KEM_SEED_BYTES = 64 + 32  # ML-KEM-768 seed, then the X25519 private key


class StateError(Exception):
    """The state directory is missing, incomplete or malformed."""


class InsecureKeyFileError(StateError, PermissionError):
    """A key file is readable by the group or others, or owned by another user."""


_HEX_FIELDS = ("server_public_key", "authority", "certificate")


@dataclass(frozen=True)
class DeviceRecord:
    """What enrollment established (public information only).

    Attributes:
        device_id: Id the authority assigned.
        server_url: Base URL of the server.
        server_public_key: The server's identity key, pinned for every handshake.
        server_scheme: Signature scheme of the server's identity key.
        authority: The enrollment authority's encoded public key, pinned: every peer's
            certificate must verify against it (empty: enrolled before authorities existed).
        certificate: This device's certificate from the authority (empty: ditto).
    """

    device_id: str
    server_url: str
    server_public_key: bytes
    server_scheme: str
    authority: bytes = b""
    certificate: bytes = b""

    def to_json(self) -> str:
        """JSON text with the keys and the certificate in hex."""
        data = asdict(self)
        for name in _HEX_FIELDS:
            data[name] = getattr(self, name).hex()
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> DeviceRecord:
        """Parse :meth:`to_json` output.

        Raises:
            StateError: missing or malformed fields.
        """
        try:
            data = json.loads(text)
            return cls(
                device_id=str(data["device_id"]),
                server_url=str(data["server_url"]),
                server_public_key=bytes.fromhex(data["server_public_key"]),
                server_scheme=str(data["server_scheme"]),
                authority=bytes.fromhex(data.get("authority", "")),
                certificate=bytes.fromhex(data.get("certificate", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"{DEVICE_FILE} is malformed") from exc


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file and an atomic rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_secret(path: Path, secret: bytes) -> None:
    """Create ``path`` 0600 (exclusively, never through a symlink) holding ``secret``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret)
        fh.flush()
        os.fsync(fh.fileno())


def _read_secret(path: Path) -> SecretBytes:
    """Read a key file, refusing one that others could read or that another user owns.

    Raises:
        StateError: the file is missing.
        InsecureKeyFileError: its mode or owner is unsafe.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError as exc:
        raise StateError(f"{path} is missing: run `qflare node enroll` first") from exc
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InsecureKeyFileError(
                f"{path} must not be accessible by group or others (chmod 600 {path})"
            )
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            raise InsecureKeyFileError(f"{path} is owned by another user")
        return SecretBytes(fh.read())


def _signer_from_seed(scheme: SignatureScheme, seed: SecretBytes) -> Signer:
    raw = seed.reveal()
    if len(raw) != _SEED_BYTES[scheme]:
        raise StateError(f"{IDENTITY_FILE} has the wrong length for {scheme.value}")
    if scheme is SignatureScheme.MLDSA65:
        return MlDsa65Signer(seed)
    if scheme is SignatureScheme.ED25519:
        return Ed25519Signer(seed)
    return HybridSigner(MlDsa65Signer(SecretBytes(raw[:32])), Ed25519Signer(SecretBytes(raw[32:])))


def _kem_from_seed(seed: SecretBytes) -> HybridKem:
    raw = seed.reveal()
    if len(raw) != _KEM_SEED_BYTES:
        raise StateError(f"{KEM_FILE} has the wrong length")
    return HybridKem(MlKem768(SecretBytes(raw[:64])), X25519KeyPair(SecretBytes(raw[64:])))


class PersistentRoundRegistry(RoundRegistry):
    """A :class:`RoundRegistry` that writes every claim to disk before the claim returns.

    The client machine claims a round in ``start()``, before its first message exists, so a
    node restarted at any point afterwards refuses that round id.

    Args:
        path: The JSON file of used ``(session, round)`` pairs.
        used: Pairs loaded from it.
    """

    def __init__(self, path: Path, used: Iterable[tuple[str, int]] = ()) -> None:
        super().__init__(used)
        self._path = path

    @classmethod
    def load(cls, path: Path) -> PersistentRoundRegistry:
        """Read the registry at ``path`` (empty if the file does not exist).

        Raises:
            StateError: malformed file.
        """
        if not path.exists():
            return cls(path)
        try:
            pairs = [(str(s), int(r)) for s, r in json.loads(path.read_text())]
        except (TypeError, ValueError) as exc:
            raise StateError(f"{path} is malformed") from exc
        return cls(path, pairs)

    def claim(self, session: str, round_id: int, *, state: str) -> None:
        """Claim ``(session, round_id)`` and persist the registry (fsynced) before returning."""
        super().claim(session, round_id, state=state)
        pairs = sorted(self.used())
        _write_atomic(self._path, json.dumps(pairs).encode(), 0o600)


class NodeState:
    """A node's state directory.

    Args:
        root: The directory.
        scheme: Signature scheme of the identity key.
    """

    def __init__(self, root: Path, scheme: SignatureScheme) -> None:
        self.root = root
        self.scheme = scheme

    @classmethod
    def create(cls, root: Path, scheme: SignatureScheme, rng: Rng) -> NodeState:
        """Make the directory (0700) and fresh key seeds, unless keys exist already.

        Existing keys are kept (so a failed enrollment can be retried with the same keys) as
        long as they are of ``scheme``.

        Raises:
            StateError: keys of another scheme exist.
        """
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if (root / NODE_FILE).exists():
            state = cls.open(root)
            if state.scheme is not scheme:
                raise StateError(f"{root} holds a {state.scheme.value} identity, not {scheme}")
            return state
        for name in (IDENTITY_FILE, KEM_FILE):
            (root / name).unlink(missing_ok=True)  # leftovers of an interrupted create
        _write_secret(root / IDENTITY_FILE, rng.random_bytes(_SEED_BYTES[scheme]))
        _write_secret(root / KEM_FILE, rng.random_bytes(_KEM_SEED_BYTES))
        _write_atomic(root / NODE_FILE, json.dumps({"scheme": scheme.value}).encode(), 0o644)
        return cls(root, scheme)

    @classmethod
    def open(cls, root: Path) -> NodeState:
        """Open an existing state directory.

        Raises:
            StateError: no node has been created in ``root``.
        """
        try:
            scheme = SignatureScheme(json.loads((root / NODE_FILE).read_text())["scheme"])
        except FileNotFoundError as exc:
            raise StateError(f"{root} holds no node: run `qflare node enroll` first") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"{root / NODE_FILE} is malformed") from exc
        return cls(root, scheme)

    def signer(self) -> Signer:
        """The identity key, loaded from its seed file (checked for safe permissions)."""
        return _signer_from_seed(self.scheme, _read_secret(self.root / IDENTITY_FILE))

    def kem(self) -> HybridKem:
        """The long-term hybrid KEM key, loaded from its seed file."""
        return _kem_from_seed(_read_secret(self.root / KEM_FILE))

    @property
    def device(self) -> DeviceRecord | None:
        """The enrollment record, or ``None`` before enrollment."""
        path = self.root / DEVICE_FILE
        return DeviceRecord.from_json(path.read_text()) if path.exists() else None

    def require_device(self) -> DeviceRecord:
        """The enrollment record.

        Raises:
            StateError: the node is not enrolled.
        """
        device = self.device
        if device is None:
            raise StateError(f"{self.root} is not enrolled: run `qflare node enroll` first")
        return device

    def _legacy(self) -> StateError:
        return StateError(
            f"{self.root} was enrolled before enrollment authorities: it pins no authority key "
            "and holds no device certificate, so peers cannot verify it. Enroll it again with a "
            f"token from `qflare authority token create` (qflare node enroll --state-dir "
            f"{self.root} --token ...); its keys are kept"
        )

    def authority(self) -> AuthorityKey:
        """The pinned enrollment authority key.

        Raises:
            StateError: not enrolled, enrolled before authorities (re-enroll), or malformed.
        """
        device = self.require_device()
        if not device.authority or not device.certificate:
            raise self._legacy()
        try:
            return decode_authority_key(device.authority)
        except IdentityError as exc:
            raise StateError(f"{self.root / DEVICE_FILE}: {exc}") from exc

    def certificate(self) -> bytes:
        """This device's certificate from the authority.

        Raises:
            StateError: not enrolled, or enrolled before authorities (re-enroll).
        """
        device = self.require_device()
        if not device.authority or not device.certificate:
            raise self._legacy()
        return device.certificate

    def save_device(self, record: DeviceRecord) -> None:
        """Store the enrollment record."""
        _write_atomic(self.root / DEVICE_FILE, record.to_json().encode(), 0o644)

    def registry(self) -> PersistentRoundRegistry:
        """The persisted round registry."""
        return PersistentRoundRegistry.load(self.root / ROUNDS_FILE)

    @property
    def ca_file(self) -> Path | None:
        """The CA certificate copied at enrollment, if any."""
        path = self.root / CA_FILE
        return path if path.exists() else None

    def save_ca(self, pem: bytes) -> None:
        """Keep a copy of the CA certificate for later runs."""
        _write_atomic(self.root / CA_FILE, pem, 0o644)
