"""HeadTracker: a relying party takes only consistent, quorum-cosigned heads; a fork is fatal."""

import pytest

from qflare.ledger import (
    CosignedHead,
    HeadTracker,
    InvalidProof,
    InvalidTreeHead,
    LedgerForked,
    LedgerTampered,
    QuorumNotMet,
    StaleTreeHead,
)
from tests.ledger.test_audit import history
from tests.ledger.witness_helpers import NOW, cosigned, rewritten


@pytest.fixture
def keys(witnesses):
    return [w.public_key for w in witnesses]


def tracked(signer, keys, quorum=2, held=None):
    return HeadTracker(signer.public_key, keys, quorum, held)


def test_first_head_then_growth(signer, witnesses, keys):
    ledger = history(5)
    tracker = tracked(signer, keys)
    first = cosigned(ledger, signer, witnesses[:2])
    assert tracker.proof_range(first) is None
    assert tracker.accept(first) is True
    assert tracker.held is first
    history(4, start=5, ledger=ledger)
    second = cosigned(ledger, signer, witnesses[1:], state_size=5)
    assert tracker.proof_range(second) == (5, 9)
    assert tracker.accept(second, ledger.consistency_proof(5, 9)) is True
    assert tracker.held is second
    same = cosigned(ledger, signer, witnesses[:2], state_size=9)  # same size, same time
    assert tracker.accept(same) is False
    assert tracker.held is second
    newer = cosigned(ledger, signer, witnesses[:2], state_size=9, now=NOW + 1)
    assert tracker.accept(newer) is False
    assert tracker.held is newer


def test_a_rewritten_history_is_a_fork(signer, witnesses, keys):
    honest = history(8)
    tracker = tracked(signer, keys, held=cosigned(honest, signer, witnesses))
    forged = rewritten(honest)
    same_size = CosignedHead(sth=forged.head(signer, 2_000.0))  # no witness cosigns it
    with pytest.raises(LedgerForked, match="different roots") as err:
        tracker.accept(same_size)
    assert isinstance(err.value, LedgerTampered)
    history(3, start=8, ledger=forged)
    longer = CosignedHead(sth=forged.head(signer, 2_000.0))
    with pytest.raises(LedgerForked, match="rewritten"):
        tracker.accept(longer, forged.consistency_proof(8, 11))
    assert tracker.held.sth.tree_size == 8


def test_a_consistent_head_without_quorum_keeps_the_held_one(signer, witnesses, keys):
    ledger = history(5)
    tracker = tracked(signer, keys)
    with pytest.raises(QuorumNotMet):
        tracker.accept(CosignedHead(sth=ledger.head(signer, 1.0)))
    assert tracker.held is None
    first = cosigned(ledger, signer, witnesses[:2])
    tracker.accept(first)
    history(2, start=5, ledger=ledger)
    with pytest.raises(QuorumNotMet, match="1 of 3"):
        tracker.accept(cosigned(ledger, signer, witnesses[:1], 5), ledger.consistency_proof(5, 7))
    assert tracker.held is first


def test_an_older_consistent_head_is_stale_an_older_inconsistent_one_a_fork(
    signer, witnesses, keys
):
    ledger = history(5)
    old = cosigned(ledger, signer, witnesses)
    history(3, start=5, ledger=ledger)
    tracker = tracked(signer, keys, held=cosigned(ledger, signer, witnesses, 5))
    assert tracker.proof_range(old) == (5, 8)
    with pytest.raises(StaleTreeHead):
        tracker.accept(old, ledger.consistency_proof(5, 8))
    older_fork = cosigned(rewritten(ledger, index=1, size=5), signer, witnesses)
    with pytest.raises(LedgerForked):
        tracker.accept(older_fork, ledger.consistency_proof(5, 8))


def test_proofs_for_other_sizes_and_missing_proofs(signer, witnesses, keys):
    ledger = history(5)
    tracker = tracked(signer, keys, held=cosigned(ledger, signer, witnesses))
    history(3, start=5, ledger=ledger)
    new = cosigned(ledger, signer, witnesses, 5)
    with pytest.raises(InvalidProof, match="not"):
        tracker.accept(new, ledger.consistency_proof(4, 8))
    with pytest.raises(ValueError, match="needed"):
        tracker.accept(new)
    assert tracker.held.sth.tree_size == 5


def test_heads_of_another_key_are_refused(signer, other_signer, witnesses, keys):
    ledger = history(3)
    with pytest.raises(InvalidTreeHead):
        tracked(signer, keys).accept(cosigned(ledger, other_signer, witnesses))
    with pytest.raises(InvalidTreeHead):
        tracked(signer, keys, held=cosigned(ledger, other_signer, witnesses))
    with pytest.raises(ValueError, match="quorum"):
        tracked(signer, keys, quorum=4)
