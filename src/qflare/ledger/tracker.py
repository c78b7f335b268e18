"""What a relying party (a node, ``qflare ledger verify``) keeps: the last head it accepted.

A :class:`HeadTracker` accepts a new cosigned head only when it is signed by the ledger key,
consistent with the held head (an RFC 6962 proof between the two sizes, fetched from the server)
and cosigned by a quorum of the configured witnesses. The failures are graded:

* :class:`~qflare.ledger.errors.LedgerForked`: the server signed two histories that are not one
  append-only log (equal sizes with different roots, or a proof that fails). That is proof of a
  rewrite; a node stops.
* :class:`~qflare.ledger.errors.QuorumNotMet` / :class:`~qflare.ledger.errors.StaleTreeHead`
  (both :class:`~qflare.ledger.errors.HeadNotAccepted`): nothing is proven, the held head stays.

Consistency is checked before the quorum, so a rewritten history is caught even when no witness
cosigned it (which honest witnesses never do).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from qflare.ledger.errors import InvalidProof, LedgerForked, StaleTreeHead
from qflare.ledger.head import verify_tree_head
from qflare.ledger.merkle import ConsistencyProof, verify_consistency
from qflare.ledger.witness import (
    LEDGER_SCHEME,
    CosignedHead,
    check_quorum,
    verify_cosigned_head,
)


class HeadTracker:
    """The last accepted cosigned head of one ledger, and the rules for replacing it.

    Args:
        server_key: The ledger key (the server's ML-DSA-65 identity key).
        witness_keys: Public keys of the witnesses this party trusts.
        quorum: How many of them must cosign a head.
        held: A head accepted earlier (e.g. loaded from disk); its server signature is checked.

    Raises:
        ValueError: ``quorum`` is impossible for ``witness_keys``.
        InvalidTreeHead: ``held`` is not signed by ``server_key``.
    """

    def __init__(
        self,
        server_key: bytes,
        witness_keys: Iterable[bytes],
        quorum: int,
        held: CosignedHead | None = None,
    ) -> None:
        self._keys = tuple(check_quorum(witness_keys, quorum).values())
        self._server_key, self._quorum = server_key, quorum
        if held is not None:
            verify_tree_head(held.sth, server_key, scheme=LEDGER_SCHEME)
        self._held = held

    @property
    def held(self) -> CosignedHead | None:
        """The last accepted head (``None`` before the first)."""
        return self._held

    def proof_range(self, head: CosignedHead) -> tuple[int, int] | None:
        """The ``(first, second)`` sizes of the consistency proof :meth:`accept` needs, if any."""
        if self._held is None:
            return None
        a, b = self._held.sth.tree_size, head.sth.tree_size
        return None if a == b else (min(a, b), max(a, b))

    def accept(self, head: CosignedHead, proof: ConsistencyProof | None = None) -> bool:
        """Take ``head`` as the new held head if it passes every check.

        Args:
            head: The server's current cosigned head.
            proof: The consistency proof for :meth:`proof_range` (``None`` when it needs none).

        Returns:
            Whether the held head grew (``False`` for a head of the same size, which replaces
            the held one only if it is newer).

        Raises:
            InvalidTreeHead: the head is not signed by the ledger key.
            LedgerForked: the head and the held head are provably not one history.
            InvalidProof: the proof is for other sizes than :meth:`proof_range`.
            StaleTreeHead: the head is consistent but smaller than the held one.
            QuorumNotMet: too few cosignatures of configured witnesses.
            ValueError: a needed proof is missing.
        """
        verify_tree_head(head.sth, self._server_key, scheme=LEDGER_SCHEME)
        held = self._held
        if held is not None:
            self._check_consistent(held, head, proof)
            if head.sth.tree_size < held.sth.tree_size:
                raise StaleTreeHead(
                    f"head of {head.sth.tree_size} entries is older than the held head of "
                    f"{held.sth.tree_size}"
                )
        verify_cosigned_head(head, self._keys, self._quorum, self._server_key)
        grew = held is None or head.sth.tree_size > held.sth.tree_size
        if grew or (held is not None and head.sth.timestamp > held.sth.timestamp):
            self._held = head  # a refreshed head of the same size replaces an older one
        return grew

    def _check_consistent(
        self, held: CosignedHead, head: CosignedHead, proof: ConsistencyProof | None
    ) -> None:
        old, new = held.sth, head.sth
        if old.tree_size == new.tree_size:
            if not hmac.compare_digest(old.root_hash, new.root_hash):
                raise LedgerForked(
                    f"two signed heads of {new.tree_size} entries have different roots "
                    f"({old.root_hash.hex()[:16]}… held, {new.root_hash.hex()[:16]}… now)"
                )
            return
        want = self.proof_range(head)
        if proof is None:
            raise ValueError(f"a consistency proof for sizes {want} is needed")
        if (proof.old_size, proof.new_size) != want:
            raise InvalidProof(
                f"the proof is for sizes ({proof.old_size}, {proof.new_size}), not {want}"
            )
        small, large = (old, new) if old.tree_size < new.tree_size else (new, old)
        try:
            verify_consistency(proof, small.root_hash, large.root_hash)
        except InvalidProof as exc:
            raise LedgerForked(
                f"the signed tree of {large.tree_size} entries does not extend the signed tree "
                f"of {small.tree_size} ({exc}): the ledger history was rewritten"
            ) from exc
