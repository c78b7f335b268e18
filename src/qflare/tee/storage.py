"""State-directory layout of a simulated device, its hardware-unique key, and a storage report.

``<state_dir>/secure/`` stands for the device's *trusted* storage (eFuses and RPMB on an OP-TEE
device): the simulated hardware-unique key (HUK) and the MACed counter file. Nothing else is
kept there. ``<state_dir>/host/`` is ordinary normal-world storage for public material (the
platform certificate chain); sealed blobs are returned to the host, which keeps them where it
likes and can pass them to :func:`storage_report`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from qflare.crypto import Rng, SecretBytes
from qflare.tee.errors import SecureStorageError

HUK_BYTES = 32


@dataclass(frozen=True, slots=True)
class StateLayout:
    """Paths inside one simulated device's state directory.

    Attributes:
        root: The state directory.
    """

    root: Path

    @property
    def secure_dir(self) -> Path:
        """Trusted storage (simulated eFuse + RPMB)."""
        return self.root / "secure"

    @property
    def huk_path(self) -> Path:
        """The simulated hardware-unique key (mode 0600)."""
        return self.secure_dir / "huk.bin"

    @property
    def rpmb_path(self) -> Path:
        """The MACed monotonic-counter file (mode 0600)."""
        return self.secure_dir / "rpmb.bin"

    @property
    def host_dir(self) -> Path:
        """Normal-world storage for public material."""
        return self.root / "host"

    @property
    def platform_chain_path(self) -> Path:
        """Platform certificate chain issued by the simulated manufacturer."""
        return self.host_dir / "platform-chain.bin"

    def ensure(self) -> None:
        """Create the directories (``secure/`` with mode 0700)."""
        self.secure_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.secure_dir, 0o700)
        self.host_dir.mkdir(parents=True, exist_ok=True)


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, readable by the owner only (0600)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_private_file(path: Path) -> bytes:
    """Read a trusted-storage file, refusing it if group or others may access it.

    Raises:
        SecureStorageError: the file's mode exposes it.
    """
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SecureStorageError(f"{path.name} has mode {mode:o}; trusted storage must be 0600")
    return path.read_bytes()


def load_or_create_huk(path: Path, rng: Rng) -> SecretBytes:
    """Load the simulated hardware-unique key, making it on first boot.

    Raises:
        SecureStorageError: the key file is exposed or has the wrong size.
    """
    if not path.exists():
        write_private_file(path, rng.random_bytes(HUK_BYTES))
    huk = read_private_file(path)
    if len(huk) != HUK_BYTES:
        raise SecureStorageError("hardware-unique key has the wrong size")
    return SecretBytes(huk)


@dataclass(frozen=True, slots=True)
class StorageReport:
    """Bytes a device keeps in trusted storage versus what the host keeps for it.

    Attributes:
        secure: File name to size, for everything in trusted storage.
        host: Name to size, for public files and sealed blobs held by the normal world.
    """

    secure: Mapping[str, int] = field(default_factory=dict)
    host: Mapping[str, int] = field(default_factory=dict)

    @property
    def secure_total(self) -> int:
        """Total bytes of trusted storage."""
        return sum(self.secure.values())

    @property
    def host_total(self) -> int:
        """Total bytes held by the host."""
        return sum(self.host.values())


def _sizes(directory: Path) -> dict[str, int]:
    if not directory.is_dir():
        return {}
    return {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}


def storage_report(
    state_dir: Path, sealed_blobs: Mapping[str, bytes] | None = None
) -> StorageReport:
    """Measure one device's trusted storage and the host-side material kept for it.

    Args:
        state_dir: The enclave's state directory.
        sealed_blobs: Sealed blobs the host keeps for this device, by name.
    """
    layout = StateLayout(Path(state_dir))
    host = _sizes(layout.host_dir)
    host.update({f"sealed:{name}": len(blob) for name, blob in (sealed_blobs or {}).items()})
    return StorageReport(secure=_sizes(layout.secure_dir), host=host)
