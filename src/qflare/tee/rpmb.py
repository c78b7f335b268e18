"""A simulated RPMB: named monotonic counters in a file authenticated with a HUK-derived MAC.

A real Replay Protected Memory Block also keeps a write counter inside the eMMC controller, so
an old copy of the partition cannot be written back. A file cannot do that; the simulation
instead detects a rolled-back counter file when it meets a sealed blob newer than it (see
:mod:`qflare.tee.runtime`).
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import msgspec

from qflare.crypto import NoPickle, SecretBytes
from qflare.tee.errors import CounterReuse, SecureStorageError
from qflare.tee.storage import read_private_file, write_private_file

MAX_COUNTER = 2**63 - 1
_VERSION = 1


class _Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    version: int = _VERSION
    values: dict[str, int]


class _Record(msgspec.Struct, frozen=True, array_like=True):
    body: bytes
    mac: bytes


class SimulatedRpmb(NoPickle):
    """Monotonic counters, persisted atomically, MACed with a key derived from the HUK.

    Args:
        path: The counter file (created on first write).
        mac_key: 32-byte MAC key derived from the hardware-unique key.

    Raises:
        SecureStorageError: the file exists but its MAC or format is wrong.
    """

    __slots__ = ("_mac_key", "_path", "_values")

    def __init__(self, path: Path, mac_key: SecretBytes) -> None:
        self._path = path
        self._mac_key = mac_key
        self._values: dict[str, int] = self._load() if path.exists() else {}

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._mac_key.reveal(), body, hashlib.sha256).digest()

    def _load(self) -> dict[str, int]:
        try:
            record = msgspec.msgpack.decode(read_private_file(self._path), type=_Record)
        except (msgspec.MsgspecError, ValueError):  # ValueError: invalid UTF-8
            raise SecureStorageError("counter file is malformed") from None
        if not hmac.compare_digest(record.mac, self._mac(record.body)):
            raise SecureStorageError("counter file MAC does not verify (forged or foreign)")
        body = msgspec.msgpack.decode(record.body, type=_Body)
        if body.version != _VERSION:
            raise SecureStorageError(f"counter file version {body.version} is unsupported")
        return dict(body.values)

    def _store(self, values: dict[str, int]) -> None:
        body = msgspec.msgpack.encode(_Body(values=dict(sorted(values.items()))))
        record = msgspec.msgpack.encode(_Record(body=body, mac=self._mac(body)))
        write_private_file(self._path, record)

    def read(self, key: str) -> int:
        """Current value of ``key`` (0 if never written)."""
        return self._values.get(key, 0)

    def advance(self, key: str, to_value: int) -> int:
        """Move ``key`` to ``to_value`` and persist it before returning.

        Raises:
            CounterReuse: ``to_value`` is not greater than the current value.
            ValueError: ``to_value`` exceeds 2^63 - 1.
        """
        if to_value > MAX_COUNTER:
            raise ValueError("counter value out of range")
        current = self.read(key)
        if to_value <= current:
            raise CounterReuse(f"counter {key!r} is at {current}; refusing {to_value}")
        updated = {**self._values, key: to_value}
        self._store(updated)  # persist first: a failed write leaves the old value in force
        self._values = updated
        return to_value

    def __repr__(self) -> str:
        return f"SimulatedRpmb({self._path.name}, {len(self._values)} counters)"
