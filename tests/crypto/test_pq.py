import pytest

from qflare.crypto import (
    DeterministicRng,
    HybridKem,
    InvalidSignature,
    MlDsa65Signer,
    MlKem768,
    SignatureScheme,
    make_signer,
    verify_signature,
)


@pytest.mark.parametrize("scheme", list(SignatureScheme))
def test_signatures_verify_and_reject_forgeries(scheme):
    rng = DeterministicRng(11)
    signer = make_signer(scheme, rng)
    other = make_signer(scheme, rng)
    sig = signer.sign(b"msg", context=b"ctx")
    verify_signature(scheme, signer.public_key, sig, b"msg", context=b"ctx")
    with pytest.raises(InvalidSignature):
        verify_signature(scheme, signer.public_key, sig, b"msg2", context=b"ctx")
    with pytest.raises(InvalidSignature):
        verify_signature(scheme, signer.public_key, sig, b"msg", context=b"other")
    with pytest.raises(InvalidSignature):
        verify_signature(scheme, other.public_key, sig, b"msg", context=b"ctx")
    flipped = bytearray(sig)
    flipped[10] ^= 0x40
    with pytest.raises(InvalidSignature):
        verify_signature(scheme, signer.public_key, bytes(flipped), b"msg", context=b"ctx")
    with pytest.raises(InvalidSignature):
        verify_signature(scheme, b"short", sig, b"msg", context=b"ctx")


def test_mldsa_key_is_deterministic_from_seed_and_sizes_match_fips204():
    a = MlDsa65Signer.generate(DeterministicRng(5))
    b = MlDsa65Signer.generate(DeterministicRng(5))
    assert a.public_key == b.public_key
    assert len(a.public_key) == 1952
    assert len(a.sign(b"x", context=b"")) == 3309


def test_mlkem_roundtrip_and_implicit_rejection():
    kem = MlKem768.generate(DeterministicRng(9))
    ss, ct = MlKem768.encapsulate(kem.public_key)
    assert len(ct) == 1088
    assert kem.decapsulate(ct) == ss
    bad = bytearray(ct)
    bad[0] ^= 1
    assert kem.decapsulate(bytes(bad)) != ss


def test_hybrid_kem_roundtrip():
    rng = DeterministicRng(10)
    kem = HybridKem.generate(rng)
    ss, ct = HybridKem.encapsulate(kem.public_key, rng)
    assert kem.decapsulate(ct) == ss
    other = HybridKem.generate(rng)
    assert other.decapsulate(ct) != ss
