"""RFC 6962 tree: known answers, a naive reference implementation, and tampered proofs."""

import hashlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qflare.ledger import merkle
from qflare.ledger.merkle import (
    EMPTY_ROOT,
    ConsistencyProof,
    InclusionProof,
    InvalidProof,
    MerkleTree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

# ---- naive reference: RFC 6962 §2.1 transcribed with list slicing --------------------------


def _k(n):
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(d):
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + naive_mth(d[:k]) + naive_mth(d[k:])).digest()


def naive_path(m, d):
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*naive_path(m, d[:k]), naive_mth(d[k:])]
    return [*naive_path(m - k, d[k:]), naive_mth(d[:k])]


def naive_subproof(m, d, b):
    if m == len(d):
        return [] if b else [naive_mth(d)]
    k = _k(len(d))
    if m <= k:
        return [*naive_subproof(m, d[:k], b), naive_mth(d[k:])]
    return [*naive_subproof(m - k, d[k:], False), naive_mth(d[:k])]


def naive_proof(m, d):
    return naive_subproof(m, d, True) if 0 < m < len(d) else []


# ---- fixtures --------------------------------------------------------------------------------

N = 64
DATA = [hashlib.sha256(b"leaf %d" % i).digest()[: i % 7] + i.to_bytes(2, "big") for i in range(300)]
TREE = MerkleTree(leaf_hash(x) for x in DATA)
ROOTS = [naive_mth(DATA[:n]) for n in range(N + 1)]

# Certificate Transparency reference vectors (RFC 6962 test data, 8 leaves).
CT_DATA = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    bytes.fromhex(h)
    for h in (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
CT_INCLUSION = {
    (0, 8): (
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ),
    (5, 8): (
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ),
}
CT_CONSISTENCY = {
    (2, 8): (
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ),
    (6, 8): (
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ),
}


def _flip(b, i=0):
    out = bytearray(b)
    out[i % len(out)] ^= 0x01
    return bytes(out)


# ---- known answers ---------------------------------------------------------------------------


def test_ct_vectors():
    tree = MerkleTree(leaf_hash(x) for x in CT_DATA)
    assert [tree.root(n) for n in range(9)] == CT_ROOTS
    assert [naive_mth(CT_DATA[:n]) for n in range(9)] == CT_ROOTS
    for (i, n), want in CT_INCLUSION.items():
        proof = tree.inclusion_proof(i, n)
        assert proof.path == tuple(bytes.fromhex(h) for h in want)
        verify_inclusion(proof, leaf_hash(CT_DATA[i]), CT_ROOTS[n])
    for (m, n), want in CT_CONSISTENCY.items():
        proof = tree.consistency_proof(m, n)
        assert proof.path == tuple(bytes.fromhex(h) for h in want)
        verify_consistency(proof, CT_ROOTS[m], CT_ROOTS[n])


def test_hash_prefixes_and_empty_root():
    assert EMPTY_ROOT == hashlib.sha256(b"").digest() == MerkleTree().root()
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )


def test_roots_match_naive_for_every_size():
    for n in range(len(DATA) + 1):
        assert TREE.root(n) == naive_mth(DATA[:n]), n


def test_incremental_tree_equals_batch_tree():
    tree = MerkleTree()
    for n, x in enumerate(DATA[:100], 1):
        tree.append(x)
        assert tree.root() == TREE.root(n)


def test_every_inclusion_proof_matches_naive_and_verifies():
    for n in range(1, N + 1):
        for i in range(n):
            proof = TREE.inclusion_proof(i, n)
            assert list(proof.path) == naive_path(i, DATA[:n]), (i, n)
            verify_inclusion(proof, leaf_hash(DATA[i]), ROOTS[n])


def test_every_consistency_proof_matches_naive_and_verifies():
    for n in range(N + 1):
        for m in range(n + 1):
            proof = TREE.consistency_proof(m, n)
            assert list(proof.path) == naive_proof(m, DATA[:n]), (m, n)
            verify_consistency(proof, ROOTS[m], ROOTS[n])


def test_range_errors():
    with pytest.raises(IndexError):
        TREE.inclusion_proof(5, 5)
    with pytest.raises(ValueError, match="tree size"):
        TREE.root(len(DATA) + 1)
    with pytest.raises(ValueError, match="old size"):
        TREE.consistency_proof(6, 5)
    with pytest.raises(ValueError, match="32 bytes"):
        MerkleTree([b"short"])


def test_root_and_proofs_cost_polylog_hashes(monkeypatch):
    big = MerkleTree(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(100_000))
    calls = 0
    real = merkle.node_hash

    def counting(left, right):
        nonlocal calls
        calls += 1
        return real(left, right)

    monkeypatch.setattr(merkle, "node_hash", counting)
    root = big.root()
    p = big.consistency_proof(77_777)
    q = big.inclusion_proof(31_337)
    assert calls <= 3 * 17 * 17
    verify_consistency(p, big.root(77_777), root)
    verify_inclusion(q, big.leaf(31_337), root)


# ---- verifiers reject anything else ----------------------------------------------------------

pairs = st.integers(1, N).flatmap(lambda n: st.tuples(st.integers(0, n - 1), st.just(n)))


@given(pairs, st.data())
def test_tampered_inclusion_proofs_fail(pair, data):
    i, n = pair
    proof = TREE.inclusion_proof(i, n)
    leaf, root = leaf_hash(DATA[i]), ROOTS[n]
    bad = [
        (proof, _flip(leaf), root),
        (proof, leaf, _flip(root)),
        (proof, leaf_hash(DATA[i + 1]), root),
        (InclusionProof(leaf_index=i, tree_size=n, path=(*proof.path, bytes(32))), leaf, root),
        (InclusionProof(leaf_index=n, tree_size=n, path=proof.path), leaf, root),
        (InclusionProof(version=2, leaf_index=i, tree_size=n, path=proof.path), leaf, root),
    ]
    if proof.path:
        k = data.draw(st.integers(0, len(proof.path) - 1))
        path = list(proof.path)
        flipped = [*path[:k], _flip(path[k], data.draw(st.integers(0, 31))), *path[k + 1 :]]
        bad.append((InclusionProof(leaf_index=i, tree_size=n, path=tuple(flipped)), leaf, root))
        bad.append((InclusionProof(leaf_index=i, tree_size=n, path=tuple(path[:-1])), leaf, root))
        bad.append((InclusionProof(leaf_index=i, tree_size=n, path=(path[k][:31],)), leaf, root))
    if n > 1:
        other = (i + data.draw(st.integers(1, n - 1))) % n
        bad.append((InclusionProof(leaf_index=other, tree_size=n, path=proof.path), leaf, root))
    for p, lf, rt in bad:
        with pytest.raises(InvalidProof):
            verify_inclusion(p, lf, rt)


@given(pairs, st.data())
def test_tampered_consistency_proofs_fail(pair, data):
    m, n = pair
    proof = TREE.consistency_proof(m, n)
    old, new = ROOTS[m], ROOTS[n]
    bad = [(proof, _flip(old), new), (proof, new, old)]
    if m > 0:  # the empty tree is a prefix of every tree, whatever its root
        bad.append((proof, old, _flip(new)))
        path = list(proof.path)
        k = data.draw(st.integers(0, len(path) - 1))
        flipped = [*path[:k], _flip(path[k], data.draw(st.integers(0, 31))), *path[k + 1 :]]
        for p in (
            flipped,
            path[:-1],
            path[1:],
            [*path, bytes(32)],
            path[::-1] if len(path) > 1 else [],
        ):
            bad.append((ConsistencyProof(old_size=m, new_size=n, path=tuple(p)), old, new))
        bad.append((ConsistencyProof(old_size=n, new_size=m, path=proof.path), new, old))
        bad.append((proof, ROOTS[m - 1], new))
    for p, o, nw in bad:
        with pytest.raises(InvalidProof):
            verify_consistency(p, o, nw)


@given(pairs, st.data())
def test_rewritten_history_is_not_consistent(pair, data):
    m, n = pair
    if m == 0:
        return
    k = data.draw(st.integers(0, m - 1), label="rewritten leaf")
    forged = [*DATA[:k], DATA[k] + b"!", *DATA[k + 1 : n]]
    tree = MerkleTree(leaf_hash(x) for x in forged)
    with pytest.raises(InvalidProof):
        verify_consistency(tree.consistency_proof(m, n), ROOTS[m], tree.root())


def test_degenerate_consistency_cases():
    verify_consistency(ConsistencyProof(old_size=0, new_size=8, path=()), EMPTY_ROOT, ROOTS[8])
    verify_consistency(ConsistencyProof(old_size=4, new_size=4, path=()), ROOTS[4], ROOTS[4])
    for proof, old, new in [
        (ConsistencyProof(old_size=0, new_size=8, path=()), ROOTS[1], ROOTS[8]),
        (ConsistencyProof(old_size=0, new_size=8, path=(bytes(32),)), EMPTY_ROOT, ROOTS[8]),
        (ConsistencyProof(old_size=4, new_size=4, path=()), ROOTS[4], ROOTS[5]),
        (ConsistencyProof(old_size=4, new_size=4, path=(ROOTS[4],)), ROOTS[4], ROOTS[4]),
        (ConsistencyProof(old_size=6, new_size=8, path=()), ROOTS[6], ROOTS[8]),
        (ConsistencyProof(old_size=-1, new_size=8, path=()), ROOTS[6], ROOTS[8]),
    ]:
        with pytest.raises(InvalidProof):
            verify_consistency(proof, old, new)


def _check(proof):
    if isinstance(proof, ConsistencyProof):
        verify_consistency(proof, ROOTS[proof.old_size], ROOTS[proof.new_size])
    else:
        verify_inclusion(proof, TREE.leaf(proof.leaf_index), ROOTS[proof.tree_size])


def test_every_single_node_flip_is_caught():
    for n in range(1, N + 1):
        for j in range(n + 1):
            for proof in (TREE.consistency_proof(j, n), TREE.inclusion_proof(min(j, n - 1), n)):
                _check(proof)
                for k in range(len(proof.path)):
                    path = list(proof.path)
                    path[k] = _flip(path[k], k)
                    with pytest.raises(InvalidProof):
                        _check(msgspec.structs.replace(proof, path=tuple(path)))
