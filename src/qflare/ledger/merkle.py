"""RFC 6962 Merkle tree: roots, inclusion and consistency proofs, and their verifiers.

Hashing is RFC 6962 §2.1 with SHA-256: ``leaf = H(0x00 || data)``, ``node = H(0x01 || l || r)``,
the empty tree's root is ``H("")``, and a tree of ``n > 1`` leaves splits at ``k``, the largest
power of two below ``n``. Proofs are generated exactly as PATH (§2.1.1) and PROOF (§2.1.2);
they are verified with the algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2.

:class:`MerkleTree` keeps the hash of every complete, aligned subtree (2n hashes in all), so a
root or a proof for any tree size costs O(log² n) hashes at most and an append O(1) amortised.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from typing import Final

import msgspec

from qflare.ledger.errors import InvalidProof

PROOF_VERSION: Final = 1
HASH_SIZE: Final = 32
MAX_PATH: Final = 64  # tree sizes are below 2**64
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly below ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


class InclusionProof(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Audit path proving that leaf ``leaf_index`` is in the tree of ``tree_size`` leaves."""

    version: int = PROOF_VERSION
    leaf_index: int
    tree_size: int
    path: tuple[bytes, ...]


class ConsistencyProof(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Nodes proving that the tree of ``new_size`` leaves extends the one of ``old_size``."""

    version: int = PROOF_VERSION
    old_size: int
    new_size: int
    path: tuple[bytes, ...]


class MerkleTree:
    """Append-only RFC 6962 tree with every complete aligned subtree hash cached.

    ``self._levels[h][i]`` is the hash of leaves ``[i * 2**h, (i + 1) * 2**h)``. Every range the
    RFC's recursion visits starts at a multiple of the next power of two above its size, so a
    power-of-two range is one lookup and any other range splits into O(log n) of them.

    Args:
        leaf_hashes: Initial leaf hashes, in order.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append_hash(h)

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._levels[0])

    def append(self, data: bytes) -> bytes:
        """Append a leaf with contents ``data``; return its leaf hash."""
        h = leaf_hash(data)
        self.append_hash(h)
        return h

    def append_hash(self, leaf: bytes) -> None:
        """Append an already computed leaf hash."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"leaf hash must be {HASH_SIZE} bytes")
        self._levels[0].append(leaf)
        height = 0
        while len(self._levels[height]) % 2 == 0:
            below = self._levels[height]
            if height + 1 == len(self._levels):
                self._levels.append([])
            self._levels[height + 1].append(node_hash(below[-2], below[-1]))
            height += 1

    def leaf(self, index: int) -> bytes:
        """Leaf hash at ``index``."""
        if not 0 <= index < self.size:
            raise IndexError(f"leaf {index} outside a tree of {self.size}")
        return self._levels[0][index]

    def root(self, tree_size: int | None = None) -> bytes:
        """MTH of the first ``tree_size`` leaves (default: all of them)."""
        n = self._size_arg(tree_size)
        return EMPTY_ROOT if n == 0 else self._hash(0, n)

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> InclusionProof:
        """RFC 6962 §2.1.1 PATH(index, D[0:tree_size])."""
        n = self._size_arg(tree_size)
        if not 0 <= index < n:
            raise IndexError(f"leaf {index} outside a tree of {n}")
        path: list[bytes] = []
        start, end = 0, n
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                path.append(self._hash(start + k, end))
                end = start + k
            else:
                path.append(self._hash(start, start + k))
                start += k
        path.reverse()
        return InclusionProof(leaf_index=index, tree_size=n, path=tuple(path))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        """RFC 6962 §2.1.2 PROOF(old_size, D[0:new_size]); empty when old is 0 or equal."""
        n = self._size_arg(new_size)
        if not 0 <= old_size <= n:
            raise ValueError(f"old size {old_size} outside 0..{n}")
        path = self._subproof(old_size, n) if 0 < old_size < n else []
        return ConsistencyProof(old_size=old_size, new_size=n, path=tuple(path))

    def _subproof(self, m: int, n: int) -> list[bytes]:
        """SUBPROOF(m, D[0:n], true), walked iteratively from the root down."""
        path: list[bytes] = []
        start, end, whole = 0, n, True  # ``whole``: the old tree is exactly D[0:start+m]
        while m != end - start:
            k = _split(end - start)
            if m <= k:
                path.append(self._hash(start + k, end))
                end = start + k
            else:
                path.append(self._hash(start, start + k))
                start, m, whole = start + k, m - k, False
        if not whole:
            path.append(self._hash(start, end))
        path.reverse()
        return path

    def _hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for an aligned range visited by the RFC's recursion."""
        size = end - start
        if size & (size - 1) == 0:
            height = size.bit_length() - 1
            return self._levels[height][start >> height]
        k = _split(size)
        return node_hash(self._hash(start, start + k), self._hash(start + k, end))

    def _size_arg(self, tree_size: int | None) -> int:
        n = self.size if tree_size is None else tree_size
        if not 0 <= n <= self.size:
            raise ValueError(f"tree size {n} outside 0..{self.size}")
        return n


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise InvalidProof(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def _check_path(path: Sequence[bytes]) -> None:
    if len(path) > MAX_PATH:
        raise InvalidProof("proof path is too long")
    for node in path:
        _check_hash(node, "proof node")


def _equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def root_from_inclusion(leaf: bytes, index: int, tree_size: int, path: Sequence[bytes]) -> bytes:
    """Root implied by an inclusion path (RFC 9162 §2.1.3.2 steps 1-4).

    Raises:
        InvalidProof: index out of range, malformed hashes, or a path of the wrong length.
    """
    _check_hash(leaf, "leaf hash")
    _check_path(path)
    if not 0 <= index < tree_size:
        raise InvalidProof(f"leaf index {index} outside a tree of {tree_size}")
    fn, sn, r = index, tree_size - 1, leaf
    for p in path:
        if sn == 0:
            raise InvalidProof("inclusion path is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise InvalidProof("inclusion path is too short")
    return r


def verify_inclusion(proof: InclusionProof, leaf: bytes, root: bytes) -> None:
    """Check that ``leaf`` (a leaf hash) is at ``proof.leaf_index`` in the tree with ``root``.

    Raises:
        InvalidProof: the proof does not verify.
    """
    _check_version(proof.version)
    _check_hash(root, "root")
    computed = root_from_inclusion(leaf, proof.leaf_index, proof.tree_size, proof.path)
    if not _equal(computed, root):
        raise InvalidProof(f"leaf {proof.leaf_index} is not in the tree of {proof.tree_size}")


def verify_consistency(proof: ConsistencyProof, old_root: bytes, new_root: bytes) -> None:
    """Check that the tree with ``new_root`` is an append-only extension of ``old_root``.

    Follows RFC 9162 §2.1.4.2; an empty old tree (root ``H("")``) is consistent with every tree,
    and equal sizes need equal roots. Both cases take an empty path.

    Raises:
        InvalidProof: the proof does not verify.
    """
    _check_version(proof.version)
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    _check_path(proof.path)
    m, n, path = proof.old_size, proof.new_size, proof.path
    if not 0 <= m <= n:
        raise InvalidProof(f"old size {m} is not within 0..{n}")
    if m == 0 or m == n:
        expected = EMPTY_ROOT if m == 0 else new_root
        if path or not _equal(old_root, expected):
            raise InvalidProof(f"trees of {m} and {n} leaves are not consistent")
        return
    fr, sr = _consistency_roots(m, n, old_root, path)
    if not (_equal(fr, old_root) and _equal(sr, new_root)):
        raise InvalidProof(f"tree of {n} leaves does not extend the tree of {m}")


def _consistency_roots(
    m: int, n: int, old_root: bytes, path: Sequence[bytes]
) -> tuple[bytes, bytes]:
    """RFC 9162 §2.1.4.2 steps 1-6 for ``0 < m < n``: the (old, new) roots the path implies."""
    nodes = [old_root, *path] if m & (m - 1) == 0 else list(path)
    if not path:
        raise InvalidProof("consistency path is empty")
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = nodes[0]
    for c in nodes[1:]:
        if sn == 0:
            raise InvalidProof("consistency path is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise InvalidProof("consistency path is too short")
    return fr, sr


def _check_version(version: int) -> None:
    if version != PROOF_VERSION:
        raise InvalidProof(f"unsupported proof version {version}")
