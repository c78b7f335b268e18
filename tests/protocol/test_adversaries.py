"""Lying servers and network attackers: forged, tampered and replayed messages."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from qflare.protocol import messages as m
from qflare.protocol.errors import AbortReason, LocalProtocolError, RemoteProtocolError
from qflare.protocol.secagg import RoundRegistry, SecAggClient, State
from qflare.sim.cohort import Cohort, expected_sum
from tests.protocol.helpers import config, directory, inputs, signers

N = 7
CFG = config(N, N, 4)


def _exact(res, cfg=CFG) -> bool:
    return res.total is not None and np.array_equal(
        res.total, expected_sum(inputs(cfg.dim), res.survivors, cfg.dim, 32)
    )


class _Capture:
    def __init__(self) -> None:
        self.unmask: dict[int, m.UnmaskShares] = {}

    def client_hook(self, msg: m.ClientMessage) -> m.ClientMessage:
        if isinstance(msg, m.UnmaskShares):
            self.unmask[msg.sender] = msg
        return msg

    def shares_of(self, owner: int) -> tuple[int, int]:
        """(#self-mask shares, #key shares) of ``owner`` that reached the server."""
        sm = sum(owner in r.self_mask_shares for r in self.unmask.values())
        ks = sum(owner in r.key_shares for r in self.unmask.values())
        return sm, ks


def test_server_claiming_survivor_dropped_is_refused():
    """Server lists X (whose masked input it received) as dropped too: every honest client refuses."""
    victim = 3
    cap = _Capture()

    def lie(u: int, msg: m.ServerMessage) -> m.ServerMessage:
        if isinstance(msg, m.UnmaskRequest):
            return msgspec.structs.replace(msg, dropped=(*msg.dropped, victim))
        return msg

    res = Cohort(CFG, seed=3, server_hook=lie, client_hook=cap.client_hook).run(inputs(CFG.dim))
    assert res.server_state is State.ABORTED and res.total is None
    assert set(res.client_errors) == set(range(N))
    for err in res.client_errors.values():
        assert isinstance(err, RemoteProtocolError)
        assert err.reason is AbortReason.INVARIANT_VIOLATED
    assert cap.shares_of(victim) == (0, 0)


def test_server_showing_split_survivor_views_cannot_unmask():
    """Group A is shown U3 with X, group B without X; each gets only its own group's signatures.

    The server would need t self-mask shares AND t key shares of X; it gets at most one kind.
    """
    victim, group_b = 3, {4, 5, 6}
    cap = _Capture()
    sigs_b: dict[int, bytes] = {}

    def capture(msg: m.ClientMessage) -> m.ClientMessage:
        if isinstance(msg, m.ConsistencySignature) and msg.sender in group_b:
            sigs_b[msg.sender] = msg.signature
        return cap.client_hook(msg)

    def lie(u: int, msg: m.ServerMessage) -> m.ServerMessage:
        if isinstance(msg, m.ConsistencyRequest) and u in group_b:
            return msgspec.structs.replace(
                msg, survivors=tuple(v for v in msg.survivors if v != victim)
            )
        if isinstance(msg, m.UnmaskRequest) and u in group_b:
            alive = tuple(v for v in msg.survivors if v != victim)
            return msgspec.structs.replace(
                msg, survivors=alive, dropped=(victim,), signatures=dict(sorted(sigs_b.items()))
            )
        if isinstance(msg, m.UnmaskRequest):
            honest = {w: s for w, s in msg.signatures.items() if w not in group_b}
            return msgspec.structs.replace(msg, signatures=honest)
        return msg

    cohort = Cohort(
        CFG, seed=4, server_hook=lie, client_hook=capture, signers=signers(N), server_verifies=False
    )
    cohort.run(inputs(CFG.dim))
    self_mask, key = cap.shares_of(victim)
    assert not (self_mask >= CFG.t and key >= CFG.t)
    assert key == 0  # group B (3 < t clients vouching) refused to release anything
    for client in cohort.clients.values():
        assert not (client.released.self_mask & client.released.key)


def test_a_second_unmask_request_is_refused():
    """After answering R4 a client is COMPLETED: a second request asking for key shares fails."""
    sent: dict[int, m.UnmaskRequest] = {}

    def keep(u: int, msg: m.ServerMessage) -> m.ServerMessage:
        if isinstance(msg, m.UnmaskRequest):
            sent[u] = msg
        return msg

    cohort = Cohort(CFG, seed=6, server_hook=keep, signers=signers(N))
    assert cohort.run(inputs(CFG.dim)).server_state is State.COMPLETED
    client = cohort.clients[0]
    released_before = (set(client.released.self_mask), set(client.released.key))
    second = msgspec.structs.replace(
        sent[0], survivors=sent[0].survivors[1:], dropped=(sent[0].survivors[0],)
    )
    with pytest.raises(RemoteProtocolError) as info:
        client.receive(second)
    assert info.value.state == State.COMPLETED.value
    assert (client.released.self_mask, client.released.key) == released_before


def test_client_aborts_if_unmask_request_contradicts_signed_survivors():
    def lie(u: int, msg: m.ServerMessage) -> m.ServerMessage:
        if isinstance(msg, m.UnmaskRequest) and u == 0:
            return msgspec.structs.replace(
                msg, survivors=msg.survivors[:-1], dropped=(*msg.dropped, msg.survivors[-1])
            )
        return msg

    res = Cohort(CFG, seed=7, server_hook=lie, signers=signers(N)).run(inputs(CFG.dim))
    assert res.client_errors[0].reason is AbortReason.INCONSISTENT_VIEW
    assert res.server_state is State.COMPLETED and _exact(res)  # the others still finish


def test_forged_consistency_signatures_are_not_counted():
    """A signature that does not verify over our U3 never vouches: one forgery is ignored, ..."""

    def lie(u: int, msg: m.ServerMessage) -> m.ServerMessage:
        if isinstance(msg, m.UnmaskRequest) and u == 1:
            sigs = dict(msg.signatures)
            sigs[2] = sigs[3]
            return msgspec.structs.replace(msg, signatures=sigs)
        return msg

    res = Cohort(CFG, seed=8, server_hook=lie, signers=signers(N)).run(inputs(CFG.dim))
    assert 1 not in res.client_errors and _exact(res)


def test_forged_consistency_signatures_below_threshold_abort_the_client():
    """... but forgeries that leave fewer than t vouchers make the client release nothing."""
    cap = _Capture()

    def lie(u: int, msg: m.ServerMessage) -> m.ServerMessage:
        if isinstance(msg, m.UnmaskRequest) and u == 1:
            sigs = dict(msg.signatures)
            for w in (2, 4, 5, 6):
                sigs[w] = sigs[3]
            return msgspec.structs.replace(msg, signatures=sigs)
        return msg

    res = Cohort(CFG, seed=8, server_hook=lie, client_hook=cap.client_hook, signers=signers(N)).run(
        inputs(CFG.dim)
    )
    assert res.client_errors[1].reason is AbortReason.TOO_FEW_CLIENTS
    assert 1 not in cap.unmask


def test_tampered_share_ciphertext_names_sender_and_round_survives():
    sender, recipient = 5, 2

    def tamper(u: int, msg: m.ServerMessage) -> m.ServerMessage:
        if isinstance(msg, m.ShareRelay) and u == recipient:
            cts = dict(msg.ciphertexts)
            ct = bytearray(cts[sender])
            ct[3] ^= 0x80
            cts[sender] = bytes(ct)
            return msgspec.structs.replace(msg, ciphertexts=cts)
        return msg

    cohort = Cohort(CFG, seed=9, server_hook=tamper, signers=signers(N))
    res = cohort.run(inputs(CFG.dim))
    assert not res.client_errors  # the recipient does not abort: it just holds no share of 5
    assert "authentication" in cohort.clients[recipient].rejected[sender]
    assert res.server_state is State.COMPLETED
    assert recipient in res.survivors and sender in res.survivors
    assert _exact(res)


def test_forged_advertisement_signature_excludes_only_that_client():
    forger = 4

    def forge(msg: m.ClientMessage) -> m.ClientMessage:
        if isinstance(msg, m.AdvertiseKeys) and msg.sender == forger:
            return msgspec.structs.replace(msg, enc_pk=bytes(32 * [7]))
        return msg

    res = Cohort(CFG, seed=10, client_hook=forge, signers=signers(N)).run(inputs(CFG.dim))
    err = res.server_errors[0]
    assert err.client == forger and err.reason is AbortReason.BAD_SIGNATURE
    assert forger in res.excluded
    assert res.server_state is State.COMPLETED
    assert res.survivors == tuple(u for u in range(N) if u != forger)
    assert _exact(res)


def test_client_rejects_forged_advertisement_relayed_by_server():
    def swap(u: int, msg: m.ServerMessage) -> m.ServerMessage:
        if isinstance(msg, m.KeyDirectory) and u == 0:
            entries = tuple(
                msgspec.structs.replace(e, mask_pk=bytes(32 * [9])) if e.sender == 6 else e
                for e in msg.entries
            )
            return msgspec.structs.replace(msg, entries=entries)
        return msg

    cohort = Cohort(CFG, seed=11, server_hook=swap, signers=signers(N))
    res = cohort.run(inputs(CFG.dim))
    assert not res.client_errors  # client 0 excludes peer 6 from its view and goes on
    assert "badly signed" in cohort.clients[0].rejected[6]
    assert {0, 6} <= set(res.survivors) and _exact(res)


def test_replayed_message_from_older_round_is_rejected():
    old_cfg = config(N, N, 4, round_id=1)
    new_cfg = config(N, N, 4, round_id=2)
    recorded: dict[int, m.MaskedInput] = {}

    def rec(msg: m.ClientMessage) -> m.ClientMessage:
        if isinstance(msg, m.MaskedInput):
            recorded[msg.sender] = msg
        return msg

    Cohort(old_cfg, seed=12, client_hook=rec, signers=signers(N)).run(inputs(old_cfg.dim))

    def replay(msg: m.ClientMessage) -> m.ClientMessage:
        if isinstance(msg, m.MaskedInput) and msg.sender == 1:
            return recorded[1]
        return msg

    res = Cohort(new_cfg, seed=13, client_hook=replay, signers=signers(N)).run(inputs(new_cfg.dim))
    err = res.server_errors[0]
    assert err.client == 1 and "round 1" in str(err)
    assert res.server_state is State.COMPLETED and 1 not in res.survivors
    assert _exact(res, new_cfg)


def test_round_id_is_never_reused_by_a_client():
    registry = RoundRegistry()
    from qflare.crypto import DeterministicRng

    SecAggClient(CFG, 0, signers(N)[0], directory(N), DeterministicRng(1), registry).start()
    again = SecAggClient(CFG, 0, signers(N)[0], directory(N), DeterministicRng(2), registry)
    with pytest.raises(LocalProtocolError) as info:
        again.start()
    assert info.value.reason is AbortReason.ROUND_REUSED


def test_wrong_vector_length_is_rejected_and_round_survives():
    def shorten(msg: m.ClientMessage) -> m.ClientMessage:
        if isinstance(msg, m.MaskedInput) and msg.sender == 0:
            return msgspec.structs.replace(msg, vector=msg.vector[:-4])
        return msg

    res = Cohort(CFG, seed=14, client_hook=shorten, signers=signers(N)).run(inputs(CFG.dim))
    assert res.server_errors[0].client == 0
    assert res.server_errors[0].reason is AbortReason.MALFORMED_MESSAGE
    assert res.server_state is State.COMPLETED and _exact(res)
