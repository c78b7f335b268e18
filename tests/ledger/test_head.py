"""Signed tree heads: every field is bound by the signature, under the ledger's context."""

import math

import msgspec
import pytest

from qflare.crypto import DeterministicRng, SignatureScheme, make_signer
from qflare.ledger import (
    EMPTY_ROOT,
    STH_CONTEXT,
    InvalidTreeHead,
    decode_tree_head,
    encode_tree_head,
    sign_tree_head,
    verify_tree_head,
)

ROOT = bytes(range(32))


@pytest.mark.parametrize("scheme", list(SignatureScheme))
def test_every_scheme_signs_and_verifies(scheme):
    signer = make_signer(scheme, DeterministicRng(scheme.value.encode()))
    sth = sign_tree_head(signer, 10, ROOT, 123.5)
    assert sth.scheme is scheme
    verify_tree_head(sth, signer.public_key)
    verify_tree_head(sth, signer.public_key, scheme=scheme)


def test_default_head_is_ml_dsa_65(signer):
    sth = sign_tree_head(signer, 3, ROOT, 1.0)
    assert sth.scheme is SignatureScheme.MLDSA65
    assert sth.version == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"tree_size": 11},
        {"root_hash": bytes(32)},
        {"timestamp": 124.0},
        {"scheme": SignatureScheme.HYBRID},
        {"scheme": SignatureScheme.ED25519},
        {"version": 2},
        {"tree_size": -1},
        {"root_hash": ROOT[:31]},
        {"timestamp": math.nan},
    ],
)
def test_changing_any_field_breaks_the_head(signer, changes):
    sth = sign_tree_head(signer, 10, ROOT, 123.5)
    with pytest.raises(InvalidTreeHead):
        verify_tree_head(msgspec.structs.replace(sth, **changes), signer.public_key)


def test_flipped_signature_wrong_key_and_wrong_context_fail(signer, other_signer):
    sth = sign_tree_head(signer, 10, ROOT, 123.5)
    sig = bytearray(sth.signature)
    sig[100] ^= 0x04
    with pytest.raises(InvalidTreeHead):
        verify_tree_head(msgspec.structs.replace(sth, signature=bytes(sig)), signer.public_key)
    with pytest.raises(InvalidTreeHead):
        verify_tree_head(sth, other_signer.public_key)
    with pytest.raises(InvalidTreeHead):
        verify_tree_head(sth, signer.public_key, context=b"qflare/other-purpose")
    with pytest.raises(InvalidTreeHead):
        verify_tree_head(sth, signer.public_key, scheme=SignatureScheme.HYBRID)
    forged = sign_tree_head(signer, 10, ROOT, 123.5, context=b"qflare/other-purpose")
    with pytest.raises(InvalidTreeHead):
        verify_tree_head(forged, signer.public_key)
    assert STH_CONTEXT.startswith(b"qflare/ledger/")


def test_empty_tree_head_must_carry_the_empty_root(signer):
    verify_tree_head(sign_tree_head(signer, 0, EMPTY_ROOT, 1.0), signer.public_key)
    with pytest.raises(InvalidTreeHead):
        sign_tree_head(signer, 0, ROOT, 1.0)


def test_encoding_round_trip_and_garbage(signer):
    sth = sign_tree_head(signer, 10, ROOT, 123.5)
    back = decode_tree_head(encode_tree_head(sth))
    assert back == sth
    verify_tree_head(back, signer.public_key)
    for junk in (b"", b"\x91\x01", encode_tree_head(sth)[:-5]):
        with pytest.raises(InvalidTreeHead):
            decode_tree_head(junk)
