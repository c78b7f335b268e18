"""Property tests: random split views and random excluded sets against the real machines."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.protocol import messages as m
from qflare.protocol.errors import AbortReason
from qflare.protocol.secagg import State
from qflare.sim.cohort import Cohort
from tests.adversary.helpers import Loot, exact
from tests.protocol.helpers import authority, config, inputs, signers

N = 7
CFG = config(N, N, 4)


@settings(max_examples=60)
@given(
    view_of=st.lists(st.integers(0, 2), min_size=N, max_size=N),
    shown_dead=st.lists(st.sets(st.integers(0, N - 1), max_size=3), min_size=3, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_split_survivor_views_never_reveal_both_secrets_of_anyone(view_of, shown_dead, seed):
    """Each client is put in one of three groups; each group is shown its own U3 / dropped set.

    Whatever the partition, the server never holds t self-mask shares AND t key shares of one
    client, and no honest client releases both kinds for the same peer.
    """
    loot = Loot()

    def lie(u: int, msg: m.ServerMessage) -> m.ServerMessage:
        dead = shown_dead[view_of[u]] - {u}
        if isinstance(msg, m.ConsistencyRequest):
            return msgspec.structs.replace(
                msg, survivors=tuple(v for v in msg.survivors if v not in dead)
            )
        if isinstance(msg, m.UnmaskRequest):
            alive = tuple(v for v in msg.survivors if v not in dead)
            gone = tuple(sorted({*msg.dropped, *(set(msg.survivors) & dead)}))
            return msgspec.structs.replace(msg, survivors=alive, dropped=gone)
        return msg

    cohort = Cohort(
        CFG,
        seed=seed,
        signers=signers(N),
        authority=authority(N),
        server_hook=lie,
        client_hook=loot,
        server_verifies=False,
    )
    res = cohort.run(inputs(CFG.dim))
    for owner in range(N):
        assert not loot.both_secrets_of(owner, CFG.t)
    for client in cohort.clients.values():
        assert not (client.released.self_mask & client.released.key)
    if res.total is not None:
        assert exact(res, CFG)


@settings(max_examples=60)
@given(
    garbled=st.sets(st.tuples(st.integers(0, N - 1), st.integers(0, N - 1)), max_size=10),
    bad_r4=st.sets(st.tuples(st.integers(0, N - 1), st.integers(0, N - 1)), max_size=4),
    seed=st.integers(0, 2**16),
)
def test_random_excluded_shares_give_the_exact_sum_or_an_abort_naming_a_client(
    garbled, bad_r4, seed
):
    """Random (owner -> holder) ciphertexts garbled in R1 and random shares corrupted in R4."""

    def r1(msg: m.ClientMessage) -> m.ClientMessage:
        if isinstance(msg, m.EncryptedShares):
            cts = {
                v: bytes(len(ct)) if (msg.sender, v) in garbled else ct
                for v, ct in msg.ciphertexts.items()
            }
            return msgspec.structs.replace(msg, ciphertexts=cts)
        if isinstance(msg, m.UnmaskShares):
            sm = {
                o: (b"\0" * len(s) if (o, msg.sender) in bad_r4 else s)
                for o, s in msg.self_mask_shares.items()
            }
            return msgspec.structs.replace(msg, self_mask_shares=sm)
        return msg

    res = Cohort(CFG, seed=seed, signers=signers(N), authority=authority(N), client_hook=r1).run(
        inputs(CFG.dim)
    )
    assert not res.client_errors  # no honest client ever aborts over a peer's bad data
    if res.server_state is State.COMPLETED:
        assert exact(res, CFG)
    else:
        err = res.server_errors[-1]
        assert err.reason is AbortReason.RECONSTRUCTION_FAILED and err.client is not None
