"""Every (state, message type) pair: valid ones advance, all others raise and abort."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from qflare.crypto import DeterministicRng
from qflare.protocol import messages as m
from qflare.protocol.errors import RemoteProtocolError
from qflare.protocol.secagg import ROUNDS, RoundRegistry, SecAggClient, State
from qflare.protocol.secagg.client import _TRANSITIONS as CLIENT_TABLE
from qflare.protocol.secagg.server import _TRANSITIONS as SERVER_TABLE
from qflare.sim.cohort import Cohort, expected_sum
from tests.protocol.helpers import authority, config, directory, inputs, signers

N, VICTIM = 6, 2
CFG = config(N, 5, 3)  # sparse: the graph-seed exchange is part of every round
SERVER_TYPES = [
    m.SeedCommitments,
    m.KeyDirectory,
    m.ShareRelay,
    m.ConsistencyRequest,
    m.UnmaskRequest,
]
CLIENT_TYPES = [
    m.AdvertiseKeys,
    m.SeedReveal,
    m.EncryptedShares,
    m.MaskedInput,
    m.ConsistencySignature,
    m.UnmaskShares,
]
CLIENT_STATES = [
    State.R0_REVEAL_SEED,
    State.R1_SHARE_KEYS,
    State.R2_MASKED_INPUT,
    State.R3_CONSISTENCY,
    State.R4_UNMASK,
]
RESTART = (State.R1_SHARE_KEYS, m.SeedCommitments)  # valid only for the next attempt


def _record() -> tuple[dict[type, m.ServerMessage], dict[type, m.ClientMessage]]:
    """One honest run with a fixed seed: the messages to and from the victim, by type."""
    to_victim: dict[type, m.ServerMessage] = {}
    from_victim: dict[type, m.ClientMessage] = {}

    def server_hook(u: int, msg: m.ServerMessage) -> m.ServerMessage:
        if u == VICTIM:
            to_victim[type(msg)] = msg
        return msg

    def client_hook(msg: m.ClientMessage) -> m.ClientMessage:
        if msg.sender == VICTIM:
            from_victim[type(msg)] = msg
        return msg

    res = Cohort(
        CFG,
        seed=5,
        signers=signers(N),
        authority=authority(N),
        server_hook=server_hook,
        client_hook=client_hook,
    ).run(inputs(CFG.dim))
    assert res.server_state is State.COMPLETED
    return to_victim, from_victim


TO_VICTIM, FROM_VICTIM = _record()


def test_tables_cover_exactly_one_message_per_round():
    client_pairs = sorted((s.value, k.__name__) for s, k in CLIENT_TABLE)
    expected = [(s.value, k.__name__) for s, k in zip(CLIENT_STATES, SERVER_TYPES, strict=True)]
    assert client_pairs == sorted([*expected, (RESTART[0].value, RESTART[1].__name__)])
    assert sorted(s.value for s, _ in SERVER_TABLE) == sorted(s.value for s in ROUNDS)


@pytest.mark.parametrize("state", CLIENT_STATES, ids=lambda s: s.value)
@pytest.mark.parametrize("kind", SERVER_TYPES, ids=lambda k: k.__name__)
def test_client_state_message_pairs(state, kind):
    """At ``state`` the victim receives a genuine message of ``kind`` instead of the expected one."""
    valid = (state, kind) in CLIENT_TABLE and (state, kind) != RESTART

    def server_hook(u: int, msg: m.ServerMessage) -> m.ServerMessage:
        if u == VICTIM and _client_state_for(msg) is state:
            return TO_VICTIM[kind]
        return msg

    res = Cohort(
        CFG, seed=5, signers=signers(N), authority=authority(N), server_hook=server_hook
    ).run(inputs(CFG.dim))
    if valid:
        assert VICTIM not in res.client_errors
        assert VICTIM in res.survivors
    else:
        err = res.client_errors[VICTIM]
        assert isinstance(err, RemoteProtocolError)
        assert err.state == state.value and err.client == VICTIM
    # Whatever happened to the victim, the round completes with the exact sum of the survivors.
    assert res.server_state is State.COMPLETED
    assert np.array_equal(res.total, expected_sum(inputs(CFG.dim), res.survivors, CFG.dim, 32))


def _client_state_for(msg: m.ServerMessage) -> State:
    return {
        m.SeedCommitments: State.R0_REVEAL_SEED,
        m.KeyDirectory: State.R1_SHARE_KEYS,
        m.ShareRelay: State.R2_MASKED_INPUT,
        m.ConsistencyRequest: State.R3_CONSISTENCY,
        m.UnmaskRequest: State.R4_UNMASK,
    }[type(msg)]


@pytest.mark.parametrize("state", ROUNDS, ids=lambda s: s.value)
@pytest.mark.parametrize("kind", CLIENT_TYPES, ids=lambda k: k.__name__)
def test_server_state_message_pairs(state, kind):
    """At ``state`` the victim sends a genuine message of ``kind`` instead of the expected one."""
    valid = (state, kind) in SERVER_TABLE
    order = list(State)

    def client_hook(msg: m.ClientMessage) -> m.ClientMessage:
        if msg.sender == VICTIM and order.index(_server_state_for(msg)) == order.index(state):
            return FROM_VICTIM[kind]
        return msg

    res = Cohort(
        CFG, seed=5, signers=signers(N), authority=authority(N), client_hook=client_hook
    ).run(inputs(CFG.dim))
    if valid:
        assert not res.server_errors
        assert VICTIM in res.survivors
    else:
        assert res.server_errors, "server accepted a message of the wrong type"
        err = res.server_errors[0]
        assert isinstance(err, RemoteProtocolError)
        assert err.client == VICTIM and err.state == state.value
        assert VICTIM in res.excluded
    assert res.server_state is State.COMPLETED
    assert np.array_equal(res.total, expected_sum(inputs(CFG.dim), res.survivors, CFG.dim, 32))


def _server_state_for(msg: m.ClientMessage) -> State:
    return {
        m.AdvertiseKeys: State.R0_ADVERTISE_KEYS,
        m.SeedReveal: State.R0_REVEAL_SEED,
        m.EncryptedShares: State.R1_SHARE_KEYS,
        m.MaskedInput: State.R2_MASKED_INPUT,
        m.ConsistencySignature: State.R3_CONSISTENCY,
        m.UnmaskShares: State.R4_UNMASK,
    }[type(msg)]


def test_client_rejects_messages_after_completion_and_abort():
    client = SecAggClient(CFG, 0, signers(N)[0], directory(N), DeterministicRng(1), RoundRegistry())
    with pytest.raises(RemoteProtocolError) as info:
        client.receive(TO_VICTIM[m.ShareRelay])
    assert client.state is State.ABORTED
    assert info.value.state == State.R0_ADVERTISE_KEYS.value
    with pytest.raises(RemoteProtocolError):
        client.receive(TO_VICTIM[m.KeyDirectory])


def test_codec_roundtrip_and_rejections():
    for msg in [*TO_VICTIM.values()]:
        assert m.decode_server(m.encode(msg)) == msg
    for msg in [*FROM_VICTIM.values()]:
        assert m.decode_client(m.encode(msg)) == msg
        assert msg.version == m.PROTOCOL_VERSION
    with pytest.raises(msgspec.MsgspecError):
        m.decode_client(b"\xc1garbage")
    with pytest.raises(msgspec.MsgspecError):
        m.decode_client(m.encode(TO_VICTIM[m.ShareRelay]))  # a server message is not a client one
    raw = msgspec.msgpack.encode(
        {"type": "masked_input", "round_id": 1, "sender": 1, "vector": b"", "extra": 1}
    )
    with pytest.raises(msgspec.MsgspecError):
        m.decode_client(raw)
