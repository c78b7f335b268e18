import contextlib
import copy
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.crypto import (
    PRIME,
    Aead,
    DecryptionError,
    DeterministicRng,
    Label,
    MaskPrg,
    SecretBytes,
    Shamir,
    ShamirError,
    X25519KeyPair,
    hkdf,
    x25519_agree,
)


def test_prime_is_smallest_prime_above_2_256():
    # Miller-Rabin with fixed bases (deterministic for this use) and compositeness of the gap.
    def is_probable_prime(n: int) -> bool:
        d, s = n - 1, 0
        while d % 2 == 0:
            d //= 2
            s += 1
        for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41):
            x = pow(a, d, n)
            if x in (1, n - 1):
                continue
            for _ in range(s - 1):
                x = x * x % n
                if x == n - 1:
                    break
            else:
                return False
        return True

    assert PRIME > 2**256
    assert is_probable_prime(PRIME)
    assert not any(is_probable_prime(c) for c in range(2**256 + 1, PRIME, 2))


def test_secret_bytes_is_redacted_and_unpicklable():
    s = SecretBytes(b"\x01" * 32)
    assert "01" not in repr(s) and "redacted" in repr(s)
    assert "01" not in str(s)
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(TypeError):
        copy.copy(s)
    with pytest.raises(TypeError):
        pickle.dumps(X25519KeyPair.generate(DeterministicRng(1)))


def test_x25519_agreement_is_symmetric_and_label_bound():
    rng = DeterministicRng(7)
    a, b = X25519KeyPair.generate(rng), X25519KeyPair.generate(rng)
    label = Label("test", "sess", 3, (1, 2))
    assert a.agree(b.public, label) == b.agree(a.public, label)
    assert a.agree(b.public, label) != a.agree(b.public, Label("test", "sess", 4, (1, 2)))
    assert a.agree(b.public, label) != a.agree(b.public, Label("other", "sess", 3, (1, 2)))
    assert x25519_agree(a.private_bytes(), b.public, label) == a.agree(b.public, label)


def test_rfc7748_x25519_vector():
    # RFC 7748 section 6.1: Alice's private key and Bob's public key give the known secret.
    alice = SecretBytes(
        bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob_pub = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = "4a5d9d5b a4ce2de1 728e3bf4 80350f25 e07e21c9 47d19e33 76f09b3c 1e161742".replace(
        " ", ""
    )
    pair = X25519KeyPair(alice)
    assert pair.public.hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    # HKDF-SHA256 with the label on top of the raw secret: recompute independently.
    expected = hkdf(bytes.fromhex(shared), Label("kat"))
    assert pair.agree(bob_pub, Label("kat")) == expected


def test_hkdf_rfc5869_case_1_structure():
    # Label encoding is length-prefixed: no two different labels collide by concatenation.
    assert Label("ab", "c").encode() != Label("a", "bc").encode()
    assert Label("p", pair=(1, 23)).encode() != Label("p", pair=(12, 3)).encode()


def test_aead_roundtrip_and_tamper_detection():
    aead = Aead(SecretBytes(b"k" * 32))
    ct = aead.seal(b"hello", aad=b"ctx", sequence=5)
    assert aead.open(ct, aad=b"ctx", sequence=5) == b"hello"
    with pytest.raises(DecryptionError):
        aead.open(ct, aad=b"other", sequence=5)
    with pytest.raises(DecryptionError):
        aead.open(ct, aad=b"ctx", sequence=6)
    bad = bytearray(ct)
    bad[0] ^= 1
    with pytest.raises(DecryptionError):
        aead.open(bytes(bad), aad=b"ctx", sequence=5)
    with pytest.raises(TypeError):
        aead.seal(b"x", sequence=0)  # type: ignore[call-arg]  # aad is mandatory


def test_aes_gcm_nist_vector():
    # NIST GCM test case 13 (AES-256, zero key, zero IV, empty plaintext): tag 530f8afbc74536b9a963b4f1c4cb738b
    aead = Aead(SecretBytes(bytes(32)))
    assert aead.seal(b"", aad=b"", sequence=0).hex() == "530f8afbc74536b9a963b4f1c4cb738b"


def test_mask_prg_matches_aes_ctr_known_answer():
    # NIST SP 800-38A F.5.1 uses a non-zero counter; here: AES-128 with zero key, zero counter block
    # encrypting zeros gives AES_0(0) = 66e94bd4ef8a2c3b884cfa59ca342b2e as the first block.
    prg = MaskPrg(4, 32)
    v = prg.expand(SecretBytes(bytes(16)))
    assert v.tobytes().hex() == "66e94bd4ef8a2c3b884cfa59ca342b2e"


def test_mask_prg_add_and_subtract_cancel_in_ring():
    for bits in (32, 64):
        prg = MaskPrg(1000, bits)
        x = np.random.default_rng(1).integers(0, 2**32, 1000).astype(prg.dtype)
        acc = x.copy()
        prg.add_into(acc, SecretBytes(b"s" * 16))
        assert not np.array_equal(acc, x)
        prg.sub_into(acc, SecretBytes(b"s" * 16))
        assert np.array_equal(acc, x)
        assert acc.dtype == prg.dtype


def test_mask_prg_rejects_short_seeds():
    with pytest.raises(ValueError):
        MaskPrg(4).expand(SecretBytes(b"short"))
    with pytest.raises(ValueError):
        MaskPrg(4, 16)


@settings(max_examples=40, deadline=None)
@given(t=st.integers(1, 8), extra=st.integers(0, 6), seed=st.integers(0, 2**32))
def test_shamir_any_t_shares_reconstruct(t, extra, seed):
    rng = DeterministicRng(seed)
    secret = SecretBytes(rng.random_bytes(32))
    holders = list(range(1, t + extra + 1))
    shares = Shamir(t).split(secret, holders, rng)
    import random

    chosen = random.Random(seed).sample(holders, t)
    assert Shamir(t).combine({x: shares[x] for x in chosen}) == secret


def test_shamir_fewer_than_t_raises_and_reveals_nothing_structural():
    rng = DeterministicRng(3)
    secret = SecretBytes(b"\xff" * 32)
    shares = Shamir(3).split(secret, [1, 2, 3, 4], rng)
    with pytest.raises(ShamirError):
        Shamir(3).combine({1: shares[1], 2: shares[2]})
    with pytest.raises(ShamirError):
        Shamir(3).split(secret, [1, 2], rng)
    with pytest.raises(ShamirError):
        Shamir(2).split(secret, [1, 1, 2], rng)
    # A corrupted share changes the result (and is usually caught as a non-32-byte secret).
    bad = dict(shares)
    bad[1] = (int.from_bytes(bad[1], "big") ^ 1).to_bytes(33, "big")
    with contextlib.suppress(ShamirError):
        assert Shamir(3).combine({x: bad[x] for x in (1, 2, 3)}) != secret
