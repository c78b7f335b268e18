"""Signed tree heads: the ledger operator's signed statement "my tree of n entries has root r".

The signature covers the canonical msgpack array ``[version, tree_size, root_hash, timestamp,
scheme]`` under the context ``STH_CONTEXT``, with any :class:`~qflare.crypto.Signer` (ML-DSA-65
by default in QFLARE). Two heads signed by one key that are not consistent extensions of each
other are proof that the operator rewrote history.
"""

from __future__ import annotations

import math
from typing import Final

import msgspec

from qflare.crypto import InvalidSignature, SignatureScheme, Signer, verify_signature
from qflare.ledger.errors import InvalidTreeHead
from qflare.ledger.merkle import EMPTY_ROOT, HASH_SIZE
from qflare.ledger.numbers import Finite

STH_VERSION: Final = 1
STH_CONTEXT: Final = b"qflare/ledger/tree-head/v1"


class SignedTreeHead(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A signed commitment to the first ``tree_size`` ledger entries.

    Attributes:
        version: Format version (``STH_VERSION``).
        tree_size: Number of entries covered.
        root_hash: RFC 6962 root of those entries' leaf hashes.
        timestamp: When it was signed, from the injected clock.
        signature: Signature over :func:`tree_head_message`.
        scheme: Signature scheme of the signing key.
    """

    version: int = STH_VERSION
    tree_size: int
    root_hash: bytes
    timestamp: Finite
    signature: bytes
    scheme: SignatureScheme = SignatureScheme.MLDSA65


_ENCODER: Final = msgspec.msgpack.Encoder(order="deterministic")
_DECODER: Final = msgspec.msgpack.Decoder(SignedTreeHead)


def tree_head_message(
    tree_size: int, root_hash: bytes, timestamp: float, scheme: SignatureScheme
) -> bytes:
    """The exact bytes a tree head signature covers."""
    return _ENCODER.encode((STH_VERSION, tree_size, root_hash, float(timestamp), scheme.value))


def sign_tree_head(
    signer: Signer,
    tree_size: int,
    root_hash: bytes,
    timestamp: float,
    *,
    context: bytes = STH_CONTEXT,
) -> SignedTreeHead:
    """Sign a tree head with ``signer`` (its scheme is recorded in the head)."""
    _check_fields(tree_size, root_hash, timestamp)
    message = tree_head_message(tree_size, root_hash, timestamp, signer.scheme)
    return SignedTreeHead(
        tree_size=tree_size,
        root_hash=root_hash,
        timestamp=float(timestamp),
        signature=signer.sign(message, context=context),
        scheme=signer.scheme,
    )


def verify_tree_head(
    sth: SignedTreeHead,
    public_key: bytes,
    *,
    scheme: SignatureScheme | None = None,
    context: bytes = STH_CONTEXT,
) -> None:
    """Check a tree head's form and signature; return nothing on success.

    Args:
        sth: The head to check.
        public_key: The ledger operator's public key (the trust anchor).
        scheme: If given, the scheme the head must use (refuses a downgrade to another scheme).
        context: Signature context the head was signed under.

    Raises:
        InvalidTreeHead: malformed, wrong scheme, or the signature does not verify.
    """
    if sth.version != STH_VERSION:
        raise InvalidTreeHead(f"unsupported tree head version {sth.version}")
    if scheme is not None and sth.scheme is not scheme:
        raise InvalidTreeHead(f"tree head is signed with {sth.scheme.value}, want {scheme.value}")
    _check_fields(sth.tree_size, sth.root_hash, sth.timestamp)
    message = tree_head_message(sth.tree_size, sth.root_hash, sth.timestamp, sth.scheme)
    try:
        verify_signature(sth.scheme, public_key, sth.signature, message, context=context)
    except InvalidSignature as exc:
        raise InvalidTreeHead(f"tree head of size {sth.tree_size}: bad signature") from exc


def _check_fields(tree_size: int, root_hash: bytes, timestamp: float) -> None:
    if tree_size < 0:
        raise InvalidTreeHead("tree size must be non-negative")
    if len(root_hash) != HASH_SIZE:
        raise InvalidTreeHead(f"root hash must be {HASH_SIZE} bytes")
    if tree_size == 0 and root_hash != EMPTY_ROOT:
        raise InvalidTreeHead("an empty tree's root must be SHA-256 of the empty string")
    if not (math.isfinite(timestamp) and timestamp >= 0):
        raise InvalidTreeHead("timestamp must be finite and non-negative")


def encode_tree_head(sth: SignedTreeHead) -> bytes:
    """Canonical msgpack encoding of a signed tree head (for files and HTTP bodies)."""
    return _ENCODER.encode(sth)


def decode_tree_head(data: bytes) -> SignedTreeHead:
    """Decode :func:`encode_tree_head` output; the signature is *not* checked here.

    Raises:
        InvalidTreeHead: the bytes are not a well-formed tree head.
    """
    try:
        return _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise InvalidTreeHead(f"undecodable tree head: {exc}") from exc
