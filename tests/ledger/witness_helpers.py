"""Heads, cosignatures and rewritten copies of a ledger for the witness and tracker tests."""

import msgspec

from qflare.ledger import (
    CosignedHead,
    CosignRequest,
    InMemoryLedgerStore,
    Ledger,
    WitnessState,
    encode_entry,
    witness_cosign,
)
from tests.ledger.test_audit import rechain

NOW = 1_000_000.0


def request(ledger, signer, old_size, now=NOW):
    """The server's request to a witness that cosigned ``old_size`` entries."""
    sth = ledger.head(signer, now)
    return CosignRequest(sth=sth, proof=ledger.consistency_proof(old_size, sth.tree_size))


def cosigned(ledger, signer, witnesses, state_size=0, now=NOW):
    """A head of ``ledger`` signed at ``now``, cosigned by every witness (each fresh, or at
    ``state_size``).
    """
    req = request(ledger, signer, state_size, now)
    cosigs = []
    for w in witnesses:
        state = WitnessState.initial(signer.public_key)
        if state_size:
            state = msgspec.structs.replace(
                state, tree_size=state_size, root_hash=ledger.root(state_size)
            )
        cosigs.append(witness_cosign(state, w, signer.public_key, req, NOW)[0])
    return CosignedHead(sth=req.sth, cosignatures=tuple(cosigs))


def rewritten(ledger, index=3, size=None):
    """A copy of the first ``size`` entries of ``ledger``, entry ``index`` edited, re-chained."""
    entries = ledger.entries(0, size)
    entries[index] = msgspec.structs.replace(entries[index], payload={"round": 3, "survivors": 0})
    return Ledger(InMemoryLedgerStore(encode_entry(e) for e in rechain(entries)))
