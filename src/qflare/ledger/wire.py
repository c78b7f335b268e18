"""Bodies that carry the ledger over HTTP (server, witness, node, auditor) and their JSON views.

Machines exchange these as msgpack (``Accept: application/msgpack``); people get JSON with every
byte string in hex (:func:`hex_view`), so ``curl`` output can be compared with log lines.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from qflare.ledger.head import SignedTreeHead
from qflare.ledger.numbers import Finite
from qflare.ledger.witness import COSIGNATURE_VERSION, CosignedHead

MSGPACK: Final = "application/msgpack"
MAX_PAGE: Final = 1000
"""Most entries one ``GET /v1/ledger/entries`` returns."""


class HeadReply(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``GET /v1/ledger/head``: the server's latest cosigned head and its ledger key.

    Attributes:
        version: Format version.
        head: The head and the cosignatures collected for it (none without witnesses).
        server_public_key: The ledger key; the cosignatures bind its fingerprint, so an auditor
            that trusts the witnesses can take it from here.
    """

    version: int = COSIGNATURE_VERSION
    head: CosignedHead
    server_public_key: bytes


class EntryPage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``GET /v1/ledger/entries``: canonical entry bytes ``start, start + 1, …``.

    Attributes:
        version: Format version.
        start: Index of the first entry.
        tree_size: Entries in the server's ledger when the page was read.
        entries: Canonical encodings (:func:`~qflare.ledger.entry.encode_entry`), the exact
            bytes the leaf hashes and chain links cover.
    """

    version: int = COSIGNATURE_VERSION
    start: int
    tree_size: int
    entries: tuple[bytes, ...]


class WitnessStatus(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``GET /v1/witness``: who the witness is and the last head it cosigned.

    Attributes:
        version: Format version.
        public_key: The witness's ML-DSA-65 public key.
        origin: SHA-256 of the ledger key it pinned.
        tree_size: Size of its last cosigned head (a server proves consistency from here).
        root_hash: Root of that head.
        sth: That head (``None`` before the first cosignature).
        cosigned_at: When it was cosigned.
    """

    version: int = COSIGNATURE_VERSION
    public_key: bytes
    origin: bytes
    tree_size: int
    root_hash: bytes
    sth: SignedTreeHead | None = None
    cosigned_at: Finite | None = None


def prefers_msgpack(accept: str | None) -> bool:
    """Whether an ``Accept`` header asks for msgpack (anything else gets JSON)."""
    return accept is not None and MSGPACK in accept.lower()


def hex_view(obj: msgspec.Struct) -> dict[str, Any]:
    """``obj`` as JSON-ready builtins with every ``bytes`` value in lowercase hex."""
    data = _hexify(msgspec.to_builtins(obj, builtin_types=(bytes,)))
    assert isinstance(data, dict)
    return data


def head_view(reply: HeadReply) -> dict[str, Any]:
    """The JSON of ``GET /v1/ledger/head``.

    The signed head's fields stay at the top level (as before witnesses existed); its
    cosignatures and the ledger key are added.
    """
    sth = reply.head.sth
    return {
        "tree_size": sth.tree_size,
        "root_hash": sth.root_hash.hex(),
        "timestamp": sth.timestamp,
        "signature": sth.signature.hex(),
        "scheme": str(sth.scheme),
        "cosignatures": [hex_view(c) for c in reply.head.cosignatures],
        "server_public_key": reply.server_public_key.hex(),
    }


def _hexify(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _hexify(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_hexify(v) for v in value]
    return value
