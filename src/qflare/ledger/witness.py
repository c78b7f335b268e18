"""Witness cosignatures: independent parties vouch that a signed tree head extends what they saw.

A signed tree head only says "the key holder claims this root". Whoever can write the ledger's
table can re-chain it, and a restarted server then signs a head over the forged history. A
*witness* holds its own ML-DSA-65 key and the last ``(size, root)`` it cosigned; it cosigns a new
head only after checking the head's signature against the pinned ledger key and an RFC 6962
consistency proof from its last cosigned head. A relying party that needs a quorum of witnesses
therefore only ever accepts heads of one append-only history, as long as that many witnesses are
honest.

Everything here is pure: no I/O, time passed in. The witness process persists
:class:`WitnessState` and serves :func:`witness_cosign`; nodes and auditors call
:func:`verify_cosigned_head` (or keep a :class:`~qflare.ledger.tracker.HeadTracker`).

A cosignature covers the canonical msgpack array ``[version, origin, tree_size, root_hash,
timestamp]`` under ``COSIGNATURE_CONTEXT``, where ``origin`` is the SHA-256 of the ledger key the
witness pinned: a cosignature for one ledger is never valid for another.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Iterable
from typing import Final

import msgspec

from qflare.crypto import InvalidSignature, SignatureScheme, Signer, verify_signature
from qflare.ledger.errors import (
    InvalidCosignature,
    InvalidProof,
    InvalidTreeHead,
    QuorumNotMet,
    RefusalCode,
    WitnessRefused,
)
from qflare.ledger.head import SignedTreeHead, verify_tree_head
from qflare.ledger.keyfile import key_fingerprint
from qflare.ledger.merkle import EMPTY_ROOT, ConsistencyProof, verify_consistency
from qflare.ledger.numbers import Finite

COSIGNATURE_VERSION: Final = 1
COSIGNATURE_CONTEXT: Final = b"qflare/ledger/witness-cosignature/v1"
LEDGER_SCHEME: Final = SignatureScheme.MLDSA65
"""Scheme of the server's ledger key and of every witness key."""
MAX_FUTURE_S: Final = 300.0
"""How far ahead of the witness's clock a head's timestamp may be."""
MAX_AGE_S: Final = 3600.0
"""How old a head may be: servers sign the head they send, so an old one is a replay or a broken
clock."""

_ENCODER: Final = msgspec.msgpack.Encoder(order="deterministic")


class Cosignature(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A witness's statement: "the ledger had ``(tree_size, root_hash)``, extending all I saw".

    The ledger (``origin``, the fingerprint of its key) is part of the signed message.

    Attributes:
        version: Format version (``COSIGNATURE_VERSION``).
        witness: SHA-256 fingerprint of the witness's public key.
        tree_size: Size of the cosigned head.
        root_hash: Root of the cosigned head.
        timestamp: When the witness cosigned, by its own clock.
        signature: ML-DSA-65 signature over :func:`cosignature_message`.
    """

    version: int = COSIGNATURE_VERSION
    witness: bytes
    tree_size: int
    root_hash: bytes
    timestamp: Finite
    signature: bytes


class CosignedHead(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A server's signed tree head with the witness cosignatures collected for it.

    Attributes:
        version: Format version.
        sth: The ledger operator's signed tree head.
        cosignatures: Cosignatures of exactly ``(sth.tree_size, sth.root_hash)``.
    """

    version: int = COSIGNATURE_VERSION
    sth: SignedTreeHead
    cosignatures: tuple[Cosignature, ...] = ()


class WitnessState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a witness remembers: the ledger it watches and the last head it cosigned.

    Attributes:
        version: Format version.
        origin: SHA-256 of the pinned ledger key.
        tree_size: Size of the last cosigned head (0 before the first).
        root_hash: Its root (the empty tree's root before the first).
        sth: The last cosigned head itself (``None`` before the first).
        cosigned_at: When it was cosigned, by the witness's clock.
    """

    version: int = COSIGNATURE_VERSION
    origin: bytes
    tree_size: int = 0
    root_hash: bytes = EMPTY_ROOT
    sth: SignedTreeHead | None = None
    cosigned_at: Finite | None = None

    @classmethod
    def initial(cls, server_key: bytes) -> WitnessState:
        """The state of a witness that has not cosigned anything for ``server_key`` yet."""
        return cls(origin=key_fingerprint(server_key))


class CosignRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a server sends a witness: its new head and a proof from the witness's last one.

    Attributes:
        version: Format version.
        sth: The head to cosign.
        proof: Consistency proof from ``(state.tree_size)`` to ``sth.tree_size``.
    """

    version: int = COSIGNATURE_VERSION
    sth: SignedTreeHead
    proof: ConsistencyProof


def cosignature_message(origin: bytes, tree_size: int, root_hash: bytes, timestamp: float) -> bytes:
    """The exact bytes a cosignature signs."""
    return _ENCODER.encode((COSIGNATURE_VERSION, origin, tree_size, root_hash, float(timestamp)))


def sign_cosignature(
    signer: Signer, origin: bytes, tree_size: int, root_hash: bytes, timestamp: float
) -> Cosignature:
    """Cosign ``(tree_size, root_hash)`` of the ledger ``origin`` with a witness key.

    Raises:
        ValueError: the key is not ML-DSA-65.
    """
    if signer.scheme is not LEDGER_SCHEME:
        raise ValueError(f"witness keys are {LEDGER_SCHEME.value}, not {signer.scheme.value}")
    message = cosignature_message(origin, tree_size, root_hash, timestamp)
    return Cosignature(
        witness=key_fingerprint(signer.public_key),
        tree_size=tree_size,
        root_hash=root_hash,
        timestamp=float(timestamp),
        signature=signer.sign(message, context=COSIGNATURE_CONTEXT),
    )


def verify_cosignature(
    cosig: Cosignature, witness_key: bytes, origin: bytes, sth: SignedTreeHead
) -> None:
    """Check that ``cosig`` is ``witness_key``'s cosignature of ``sth`` of the ledger ``origin``.

    Raises:
        InvalidCosignature: another version, witness or head, or a bad signature.
    """
    if cosig.version != COSIGNATURE_VERSION:
        raise InvalidCosignature(f"unsupported cosignature version {cosig.version}")
    if not hmac.compare_digest(cosig.witness, key_fingerprint(witness_key)):
        raise InvalidCosignature("cosignature names another witness")
    if cosig.tree_size != sth.tree_size or not hmac.compare_digest(cosig.root_hash, sth.root_hash):
        raise InvalidCosignature("cosignature is for another tree head")
    if not math.isfinite(cosig.timestamp):
        raise InvalidCosignature("cosignature timestamp is not finite")
    message = cosignature_message(origin, cosig.tree_size, cosig.root_hash, cosig.timestamp)
    try:
        verify_signature(
            LEDGER_SCHEME, witness_key, cosig.signature, message, context=COSIGNATURE_CONTEXT
        )
    except InvalidSignature as exc:
        raise InvalidCosignature("cosignature does not verify") from exc


def witness_cosign(
    state: WitnessState,
    signer: Signer,
    server_key: bytes,
    request: CosignRequest,
    now: float,
    *,
    max_future_s: float = MAX_FUTURE_S,
    max_age_s: float = MAX_AGE_S,
) -> tuple[Cosignature, WitnessState]:
    """The witness's decision: cosign ``request.sth`` and advance, or refuse.

    The head must be signed by the pinned ledger key, be dated neither in the future, nor long
    ago, nor before the last cosigned head, not be smaller than it, and come with a consistency
    proof from exactly the last cosigned ``(size, root)`` (an equal size must mean an equal
    root).

    Args:
        state: The witness's current state.
        signer: The witness's ML-DSA-65 key.
        server_key: The pinned ledger key (its fingerprint must be ``state.origin``).
        request: The head and the proof.
        now: The witness's clock.
        max_future_s: Tolerated clock skew of the server.
        max_age_s: Oldest head accepted.

    Returns:
        The cosignature and the state to persist *before* handing the cosignature out.

    Raises:
        WitnessRefused: with the reason's code; the state is unchanged.
        ValueError: ``server_key`` is not the ledger this state watches, or ``now`` is not finite.
    """
    if not hmac.compare_digest(key_fingerprint(server_key), state.origin):
        raise ValueError("the server key is not the ledger key this witness state pins")
    if not math.isfinite(now):
        raise ValueError("the witness clock must be finite")
    sth, proof = request.sth, request.proof
    if request.version != COSIGNATURE_VERSION:
        raise WitnessRefused(RefusalCode.BAD_HEAD, f"unsupported request version {request.version}")
    _check_time(state, sth, now, max_future_s, max_age_s)
    try:
        verify_tree_head(sth, server_key, scheme=LEDGER_SCHEME)
    except InvalidTreeHead as exc:
        raise WitnessRefused(RefusalCode.BAD_HEAD, str(exc)) from exc
    _check_extends(state, sth, proof)
    cosig = sign_cosignature(signer, state.origin, sth.tree_size, sth.root_hash, now)
    new_state = msgspec.structs.replace(
        state, tree_size=sth.tree_size, root_hash=sth.root_hash, sth=sth, cosigned_at=float(now)
    )
    return cosig, new_state


def _check_time(
    state: WitnessState, sth: SignedTreeHead, now: float, max_future_s: float, max_age_s: float
) -> None:
    if not math.isfinite(sth.timestamp):
        raise WitnessRefused(RefusalCode.BAD_TIMESTAMP, "head timestamp is not a finite number")
    if sth.timestamp < now - max_age_s:
        raise WitnessRefused(
            RefusalCode.BAD_TIMESTAMP,
            f"head is dated {now - sth.timestamp:.0f} s ago (at most {max_age_s:.0f}): "
            "a replayed head or a broken clock",
        )
    if sth.timestamp > now + max_future_s:
        raise WitnessRefused(
            RefusalCode.BAD_TIMESTAMP,
            f"head is dated {sth.timestamp - now:.0f} s in the future (at most {max_future_s:.0f})",
        )
    if state.sth is not None and sth.timestamp < state.sth.timestamp:
        raise WitnessRefused(
            RefusalCode.BAD_TIMESTAMP, "head is dated before the last head this witness cosigned"
        )


def _check_extends(state: WitnessState, sth: SignedTreeHead, proof: ConsistencyProof) -> None:
    if sth.tree_size < state.tree_size:
        raise WitnessRefused(
            RefusalCode.SMALLER_THAN_COSIGNED,
            f"head covers {sth.tree_size} entries; this witness cosigned {state.tree_size}",
        )
    if (proof.old_size, proof.new_size) != (state.tree_size, sth.tree_size):
        raise WitnessRefused(
            RefusalCode.WRONG_PROOF_RANGE,
            f"proof is from {proof.old_size} to {proof.new_size} entries; this witness needs "
            f"one from {state.tree_size} to {sth.tree_size}",
        )
    try:
        verify_consistency(proof, state.root_hash, sth.root_hash)
    except InvalidProof as exc:
        raise WitnessRefused(
            RefusalCode.INCONSISTENT,
            f"the tree of {sth.tree_size} entries does not extend the tree of {state.tree_size} "
            f"this witness cosigned ({exc}): history was rewritten",
        ) from exc


def check_quorum(witness_keys: Iterable[bytes], quorum: int) -> dict[bytes, bytes]:
    """Witness keys by fingerprint (duplicates merged), after checking ``quorum`` against them.

    Raises:
        ValueError: ``quorum`` is below 1 or above the number of distinct keys.
    """
    keys = {key_fingerprint(k): k for k in witness_keys}
    if not 1 <= quorum <= len(keys):
        raise ValueError(f"quorum must lie in 1..{len(keys)} (distinct witness keys), not {quorum}")
    return keys


def verify_cosigned_head(
    head: CosignedHead, witness_keys: Iterable[bytes], quorum: int, server_key: bytes
) -> tuple[bytes, ...]:
    """Check the server's signature and that ``quorum`` configured witnesses cosigned the head.

    Cosignatures of unknown witnesses, repeated ones and invalid ones are ignored: each
    configured witness counts at most once.

    Args:
        head: The cosigned head.
        witness_keys: Public keys of the witnesses the caller trusts.
        quorum: How many of them must have cosigned.
        server_key: The ledger key.

    Returns:
        Fingerprints of the witnesses whose cosignatures verified, in the head's order.

    Raises:
        InvalidTreeHead: the server's signature fails.
        QuorumNotMet: fewer than ``quorum`` valid cosignatures of configured witnesses.
        ValueError: ``quorum`` is impossible for ``witness_keys``.
    """
    keys = check_quorum(witness_keys, quorum)
    verify_tree_head(head.sth, server_key, scheme=LEDGER_SCHEME)
    origin = key_fingerprint(server_key)
    good: list[bytes] = []
    for cosig in head.cosignatures:
        key = keys.get(cosig.witness)
        if key is None or cosig.witness in good:
            continue
        try:
            verify_cosignature(cosig, key, origin, head.sth)
        except InvalidCosignature:
            continue
        good.append(cosig.witness)
    if len(good) < quorum:
        raise QuorumNotMet(
            f"head of {head.sth.tree_size} entries has valid cosignatures from {len(good)} of "
            f"{len(keys)} configured witnesses; {quorum} needed"
        )
    return tuple(good)
