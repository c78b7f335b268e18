"""Audit entries: a frozen ``msgspec`` struct and its canonical msgpack encoding.

The canonical encoding (``encode_entry``) is what every hash covers: the Merkle leaf is
``SHA-256(0x00 || encode_entry(e))`` and the chain link is
``SHA-256(0x02 || e.prev_hash || encode_entry(e))``. It is a msgpack map with the fields in
declaration order, payload keys sorted, floats always as 64-bit, so the same entry always
encodes to the same bytes, and ``decode_entry`` refuses any other spelling of it.

Payloads hold public facts only (ids, counts, digests in hex): values are restricted to
``str | int | float | bool | None``, so raw key bytes or :class:`~qflare.crypto.SecretBytes`
cannot be logged, and keys that name secrets are refused as a second line of defence.
"""

from __future__ import annotations

import enum
import math
import re
from typing import Final

import msgspec

from qflare.ledger.errors import InvalidEntry
from qflare.ledger.numbers import Finite

LEDGER_VERSION: Final = 1
HASH_SIZE: Final = 32
GENESIS_HASH: Final = bytes(HASH_SIZE)
"""``prev_hash`` of the entry at index 0."""

MAX_PAYLOAD_KEYS: Final = 64
MAX_TEXT: Final = 4096
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_SECRET_WORDS: Final = ("secret", "password", "passwd", "private", "priv_key", "privkey")
_SECRET_KEYS: Final = frozenset({"token", "key", "seed"})
_INT64 = (-(2**63), 2**63 - 1)

PayloadValue = str | int | float | bool | None
Payload = dict[str, PayloadValue]


class EntryKind(enum.StrEnum):
    """Kinds of event the QFLARE server records. Other ``snake_case`` names are accepted too."""

    ENROLL = "enroll"
    TOKEN_CREATE = "token_create"  # noqa: S105 - an event name, not a password
    TOKEN_REVOKE = "token_revoke"  # noqa: S105 - an event name, not a password
    ROUND_OPEN = "round_open"
    ROUND_COMPLETE = "round_complete"
    ROUND_ABORT = "round_abort"
    MODEL_UPDATE = "model_update"
    DEVICE_REVOKE = "device_revoke"


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One event in the audit ledger; validated on construction and on decoding.

    Attributes:
        version: Entry format version (``LEDGER_VERSION``).
        index: Position in the ledger, from 0.
        timestamp: Seconds since the epoch, from the injected clock (finite, non-negative).
        kind: Event kind, a ``snake_case`` name (see :class:`EntryKind`).
        actor: Who caused the event (node id, ``"server"``, an operator name).
        payload: Public facts about the event; never secrets.
        prev_hash: Chain link of the previous entry (``GENESIS_HASH`` for index 0).
    """

    version: int = LEDGER_VERSION
    index: int
    timestamp: Finite
    kind: str
    actor: str
    payload: Payload
    prev_hash: bytes

    def __post_init__(self) -> None:
        _check_header(self)
        _check_payload(self.payload)


def _check_header(entry: AuditEntry) -> None:
    if entry.version != LEDGER_VERSION:
        raise InvalidEntry(f"unsupported entry version {entry.version}")
    if entry.index < 0:
        raise InvalidEntry("index must be non-negative")
    if not (math.isfinite(entry.timestamp) and entry.timestamp >= 0):
        raise InvalidEntry("timestamp must be finite and non-negative")
    if not _NAME.fullmatch(entry.kind):
        raise InvalidEntry(f"kind {entry.kind!r} is not a snake_case name")
    if not 0 < len(entry.actor) <= 256 or not entry.actor.isprintable():
        raise InvalidEntry("actor must be 1-256 printable characters")
    if len(entry.prev_hash) != HASH_SIZE:
        raise InvalidEntry(f"prev_hash must be {HASH_SIZE} bytes")


def _check_payload(payload: Payload) -> None:
    if len(payload) > MAX_PAYLOAD_KEYS:
        raise InvalidEntry(f"payload has more than {MAX_PAYLOAD_KEYS} keys")
    for key, value in payload.items():
        if not _NAME.fullmatch(key):
            raise InvalidEntry(f"payload key {key!r} is not a snake_case name")
        if key in _SECRET_KEYS or any(word in key for word in _SECRET_WORDS):
            raise InvalidEntry(f"payload key {key!r} names a secret; secrets are never logged")
        _check_value(key, value)


def _check_value(key: str, value: object) -> None:
    if value is None or type(value) is bool:
        return
    if type(value) is int:
        if not _INT64[0] <= value <= _INT64[1]:
            raise InvalidEntry(f"payload[{key!r}] does not fit in 64 bits")
    elif type(value) is float:
        if not math.isfinite(value):
            raise InvalidEntry(f"payload[{key!r}] must be finite")
    elif type(value) is str:
        if len(value) > MAX_TEXT:
            raise InvalidEntry(f"payload[{key!r}] is longer than {MAX_TEXT} characters")
    else:
        kind = type(value).__name__
        raise InvalidEntry(f"payload[{key!r}] has type {kind}; want str/int/float/bool/None")


_ENCODER: Final = msgspec.msgpack.Encoder(order="deterministic")
_DECODER: Final = msgspec.msgpack.Decoder(AuditEntry)


def encode_entry(entry: AuditEntry) -> bytes:
    """Return the canonical msgpack encoding of ``entry`` (the bytes every hash covers)."""
    return _ENCODER.encode(entry)


def decode_entry(data: bytes) -> AuditEntry:
    """Decode canonical bytes written by :func:`encode_entry`.

    Raises:
        InvalidEntry: the bytes are malformed, fail validation, or are not canonical.
    """
    try:
        entry = _DECODER.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise InvalidEntry(f"undecodable entry: {exc}") from exc
    if encode_entry(entry) != data:
        raise InvalidEntry("entry bytes are not in canonical form")
    return entry
