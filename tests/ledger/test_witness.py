"""Witness decisions: cosign only heads that extend the last cosigned one; count cosignatures."""

import math

import msgspec
import pytest

from qflare.crypto import DeterministicRng, Ed25519Signer
from qflare.ledger import (
    Cosignature,
    CosignedHead,
    CosignRequest,
    InvalidCosignature,
    InvalidTreeHead,
    QuorumNotMet,
    RefusalCode,
    WitnessRefused,
    WitnessState,
    key_fingerprint,
    sign_tree_head,
    verify_cosignature,
    verify_cosigned_head,
    witness_cosign,
)
from qflare.ledger.merkle import ConsistencyProof
from tests.ledger.test_audit import history
from tests.ledger.witness_helpers import NOW, cosigned, request, rewritten


def test_first_head_is_cosigned_and_the_state_advances(signer, witnesses):
    ledger = history(5)
    state = WitnessState.initial(signer.public_key)
    cosig, new = witness_cosign(
        state, witnesses[0], signer.public_key, request(ledger, signer, 0), NOW
    )
    assert (new.tree_size, new.root_hash, new.cosigned_at) == (5, ledger.root(), NOW)
    assert new.sth is not None and new.sth.tree_size == 5
    assert state.tree_size == 0  # the input state is untouched
    assert cosig.witness == key_fingerprint(witnesses[0].public_key)
    verify_cosignature(cosig, witnesses[0].public_key, key_fingerprint(signer.public_key), new.sth)


def test_growth_with_a_valid_proof_is_cosigned_again(signer, witnesses):
    ledger = history(5)
    w = witnesses[0]
    _, state = witness_cosign(
        WitnessState.initial(signer.public_key),
        w,
        signer.public_key,
        request(ledger, signer, 0),
        NOW,
    )
    history(6, start=5, ledger=ledger)
    _, state = witness_cosign(state, w, signer.public_key, request(ledger, signer, 5), NOW + 1)
    assert state.tree_size == 11
    # the same head again (equal size, equal root) is cosigned afresh
    _, again = witness_cosign(state, w, signer.public_key, request(ledger, signer, 11), NOW + 2)
    assert again.tree_size == 11 and again.cosigned_at == NOW + 2


def _state_after(ledger, signer, w, size):
    req = CosignRequest(
        sth=sign_tree_head(signer, size, ledger.root(size), NOW - 10),
        proof=ledger.consistency_proof(0, size),
    )
    return witness_cosign(WitnessState.initial(signer.public_key), w, signer.public_key, req, NOW)[
        1
    ]


@pytest.mark.parametrize("extra", [0, 2])
def test_rewritten_history_is_refused_as_inconsistent(signer, witnesses, extra):
    """Same size with another root, or a longer tree over the edited entries: both refused."""
    honest = history(8)
    state = _state_after(honest, signer, witnesses[0], 8)
    forged = history(extra, start=8, ledger=rewritten(honest))
    with pytest.raises(WitnessRefused) as err:
        witness_cosign(state, witnesses[0], signer.public_key, request(forged, signer, 8), NOW)
    assert err.value.code is RefusalCode.INCONSISTENT
    assert "rewritten" in str(err.value)


def test_a_shrunk_ledger_is_refused(signer, witnesses):
    ledger = history(8)
    state = _state_after(ledger, signer, witnesses[0], 8)
    req = CosignRequest(
        sth=sign_tree_head(signer, 6, ledger.root(6), NOW), proof=ledger.consistency_proof(6, 6)
    )
    with pytest.raises(WitnessRefused) as err:
        witness_cosign(state, witnesses[0], signer.public_key, req, NOW)
    assert err.value.code is RefusalCode.SMALLER_THAN_COSIGNED


def test_a_proof_from_another_size_is_refused_with_its_own_code(signer, witnesses):
    ledger = history(8)
    state = _state_after(ledger, signer, witnesses[0], 5)
    with pytest.raises(WitnessRefused) as err:
        witness_cosign(state, witnesses[0], signer.public_key, request(ledger, signer, 4), NOW)
    assert err.value.code is RefusalCode.WRONG_PROOF_RANGE
    assert "from 5 to 8" in err.value.reason


def test_a_tampered_proof_is_refused(signer, witnesses):
    ledger = history(8)
    state = _state_after(ledger, signer, witnesses[0], 5)
    req = request(ledger, signer, 5)
    bad = ConsistencyProof(old_size=5, new_size=8, path=(bytes(32),) * len(req.proof.path))
    with pytest.raises(WitnessRefused) as err:
        witness_cosign(
            state, witnesses[0], signer.public_key, CosignRequest(sth=req.sth, proof=bad), NOW
        )
    assert err.value.code is RefusalCode.INCONSISTENT


def test_a_head_not_signed_by_the_pinned_key_is_refused(signer, other_signer, witnesses):
    ledger = history(4)
    state = WitnessState.initial(signer.public_key)
    forged = request(ledger, other_signer, 0)
    with pytest.raises(WitnessRefused) as err:
        witness_cosign(state, witnesses[0], signer.public_key, forged, NOW)
    assert err.value.code is RefusalCode.BAD_HEAD
    tampered = msgspec.structs.replace(
        forged.sth, signature=request(ledger, signer, 0).sth.signature
    )
    tampered = msgspec.structs.replace(tampered, tree_size=3)
    with pytest.raises(WitnessRefused):
        witness_cosign(
            state,
            witnesses[0],
            signer.public_key,
            CosignRequest(sth=tampered, proof=forged.proof),
            NOW,
        )
    with pytest.raises(ValueError, match="pins"):
        witness_cosign(state, witnesses[0], other_signer.public_key, forged, NOW)


@pytest.mark.parametrize("timestamp", [NOW + 301, 1e300, 0.0])
def test_heads_from_the_future_or_long_ago_are_refused(signer, witnesses, timestamp):
    ledger = history(3)
    req = request(ledger, signer, 0, now=timestamp)
    with pytest.raises(WitnessRefused) as err:
        witness_cosign(
            WitnessState.initial(signer.public_key), witnesses[0], signer.public_key, req, NOW
        )
    assert err.value.code is RefusalCode.BAD_TIMESTAMP


def test_non_finite_timestamps_never_get_signed(signer, witnesses):
    with pytest.raises(InvalidTreeHead):
        sign_tree_head(signer, 0, history(0).root(), math.inf)
    ledger = history(3)
    req = request(ledger, signer, 0)
    nan = CosignRequest(sth=msgspec.structs.replace(req.sth, timestamp=math.nan), proof=req.proof)
    with pytest.raises(WitnessRefused) as err:
        witness_cosign(
            WitnessState.initial(signer.public_key), witnesses[0], signer.public_key, nan, NOW
        )
    assert err.value.code is RefusalCode.BAD_TIMESTAMP
    with pytest.raises(ValueError, match="finite"):
        witness_cosign(
            WitnessState.initial(signer.public_key), witnesses[0], signer.public_key, req, math.nan
        )


def test_a_head_older_than_the_last_cosigned_one_is_refused(signer, witnesses):
    ledger = history(3)
    state = _state_after(ledger, signer, witnesses[0], 3)  # signed at NOW - 10
    with pytest.raises(WitnessRefused) as err:
        witness_cosign(
            state, witnesses[0], signer.public_key, request(ledger, signer, 3, now=NOW - 11), NOW
        )
    assert err.value.code is RefusalCode.BAD_TIMESTAMP


def test_witness_keys_are_ml_dsa_65(signer):
    ledger = history(1)
    classic = Ed25519Signer.generate(DeterministicRng(b"ed"))
    with pytest.raises(ValueError, match="mldsa65"):
        witness_cosign(
            WitnessState.initial(signer.public_key),
            classic,
            signer.public_key,
            request(ledger, signer, 0),
            NOW,
        )


def test_quorum_counts_each_configured_witness_once(signer, witnesses):
    ledger = history(6)
    head = cosigned(ledger, signer, witnesses[:2])
    keys = [w.public_key for w in witnesses]
    fps = verify_cosigned_head(head, keys, 2, signer.public_key)
    assert fps == tuple(key_fingerprint(w.public_key) for w in witnesses[:2])
    with pytest.raises(QuorumNotMet, match="2 of 3"):
        verify_cosigned_head(head, keys, 3, signer.public_key)
    # a repeated cosignature does not count twice; an unknown witness does not count
    doubled = CosignedHead(sth=head.sth, cosignatures=(head.cosignatures[0],) * 3)
    with pytest.raises(QuorumNotMet):
        verify_cosigned_head(doubled, keys, 2, signer.public_key)
    with pytest.raises(QuorumNotMet):
        verify_cosigned_head(head, keys[2:], 1, signer.public_key)


def test_a_bad_cosignature_does_not_count(signer, witnesses):
    ledger = history(6)
    head = cosigned(ledger, signer, witnesses[:2])
    first: Cosignature = head.cosignatures[0]
    broken = msgspec.structs.replace(first, timestamp=first.timestamp + 1)
    for bad in (broken, msgspec.structs.replace(first, tree_size=5)):
        with pytest.raises(InvalidCosignature):
            verify_cosignature(
                bad, witnesses[0].public_key, key_fingerprint(signer.public_key), head.sth
            )
        mixed = CosignedHead(sth=head.sth, cosignatures=(bad, head.cosignatures[1]))
        with pytest.raises(QuorumNotMet):
            verify_cosigned_head(mixed, [w.public_key for w in witnesses], 2, signer.public_key)


def test_cosignatures_bind_the_ledger_key(signer, other_signer, witnesses):
    """A witness's cosignature for one ledger is worthless for another with the same root."""
    ledger = history(4)
    head = cosigned(ledger, signer, witnesses[:1])
    their_sth = sign_tree_head(other_signer, head.sth.tree_size, head.sth.root_hash, NOW)
    moved = CosignedHead(sth=their_sth, cosignatures=head.cosignatures)
    with pytest.raises(QuorumNotMet):
        verify_cosigned_head(moved, [witnesses[0].public_key], 1, other_signer.public_key)
    with pytest.raises(InvalidTreeHead):
        verify_cosigned_head(moved, [witnesses[0].public_key], 1, signer.public_key)


@pytest.mark.parametrize("quorum", [0, 3])
def test_impossible_quorums_are_refused(signer, witnesses, quorum):
    head = cosigned(history(1), signer, witnesses[:1])
    keys = [witnesses[0].public_key, witnesses[1].public_key, witnesses[0].public_key]
    with pytest.raises(ValueError, match="quorum"):
        verify_cosigned_head(head, keys, quorum, signer.public_key)
