"""Replays: messages of an older round, offered to the server or to a client."""

from __future__ import annotations

import msgspec

from qflare.protocol import messages as m
from qflare.protocol.errors import AbortReason
from qflare.protocol.secagg import State
from qflare.sim.cohort import Cohort
from tests.adversary.helpers import exact
from tests.protocol.helpers import authority, config, inputs, signers

N = 7
OLD, NEW = config(N, N, 4, round_id=1), config(N, N, 4, round_id=2)


def _record() -> tuple[dict[int, m.ClientMessage], dict[int, m.ServerMessage]]:
    up: dict[int, m.ClientMessage] = {}
    down: dict[int, m.ServerMessage] = {}

    def client(msg: m.ClientMessage) -> m.ClientMessage:
        if isinstance(msg, m.MaskedInput):
            up[msg.sender] = msg
        return msg

    def server(u: int, msg: m.ServerMessage) -> m.ServerMessage:
        if isinstance(msg, m.ShareRelay):
            down[u] = msg
        return msg

    res = Cohort(
        OLD,
        seed=1,
        signers=signers(N),
        authority=authority(N),
        client_hook=client,
        server_hook=server,
    ).run(inputs(OLD.dim))
    assert exact(res, OLD)
    return up, down


def test_an_old_masked_input_replayed_to_the_server_is_refused():
    up, _ = _record()

    def replay(msg: m.ClientMessage) -> m.ClientMessage:
        return up[1] if isinstance(msg, m.MaskedInput) and msg.sender == 1 else msg

    res = Cohort(NEW, seed=2, signers=signers(N), authority=authority(N), client_hook=replay).run(
        inputs(NEW.dim)
    )
    assert res.server_errors[0].client == 1
    assert res.server_state is State.COMPLETED and 1 not in res.survivors and exact(res, NEW)


def test_an_old_share_relay_replayed_to_a_client_is_refused():
    _, down = _record()

    def replay(u: int, msg: m.ServerMessage) -> m.ServerMessage:
        return down[3] if isinstance(msg, m.ShareRelay) and u == 3 else msg

    res = Cohort(NEW, seed=3, signers=signers(N), authority=authority(N), server_hook=replay).run(
        inputs(NEW.dim)
    )
    err = res.client_errors[3]
    assert err.reason is AbortReason.UNEXPECTED_MESSAGE and "round 1" in str(err)
    assert 3 not in res.survivors and exact(res, NEW)


def test_a_relay_with_a_rewritten_round_id_fails_authentication_and_costs_only_shares():
    """The AEAD binds (session, round, sender, recipient): a relabelled old ciphertext fails."""
    _, down = _record()
    cohort = Cohort(NEW, seed=4, signers=signers(N), authority=authority(N))
    captured: dict[int, m.ShareRelay] = {}

    def relabel(u: int, msg: m.ServerMessage) -> m.ServerMessage:
        if isinstance(msg, m.ShareRelay) and u == 3:
            old = down[3]
            cts = {w: old.ciphertexts.get(w, ct) for w, ct in msg.ciphertexts.items()}
            captured[u] = msg
            return msgspec.structs.replace(msg, ciphertexts=cts)
        return msg

    cohort._server_hook = relabel
    res = cohort.run(inputs(NEW.dim))
    assert not res.client_errors
    assert all("authentication" in why for why in cohort.clients[3].rejected.values())
    assert exact(res, NEW)
