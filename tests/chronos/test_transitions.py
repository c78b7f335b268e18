"""Every (state, message type) pair of both machines: valid ones advance, others raise and abort."""

from __future__ import annotations

import msgspec
import pytest

from qflare.protocol.chronos import ChronosClient, ChronosServer, Mode, State
from qflare.protocol.chronos import messages as m
from qflare.protocol.chronos.client import _TRANSITIONS as CLIENT_TABLE
from qflare.protocol.chronos.server import _ADVANCE
from qflare.protocol.chronos.server import _TRANSITIONS as SERVER_TABLE
from qflare.protocol.errors import AbortReason, LocalProtocolError, RemoteProtocolError
from qflare.sim.chronos_cohort import ChronosCohort
from tests.chronos.helpers import cohort, config, directory, exact, inputs, keystores

N, VICTIM = 6, 2
CFG = config(N, 5, 3, mode=Mode.CHRONOS_DM, rounds=2)  # sparse: the seed exchange runs too
SERVER_TYPES = [m.SeedCommitments, m.KeyDirectory, m.ShareRelay, m.RoundStart, m.UnmaskRequest]
CLIENT_TYPES = [
    m.EpochKeys,
    m.EpochSeedReveal,
    m.EpochShares,
    m.EpochReady,
    m.MaskedInput,
    m.UnmaskShares,
]
CLIENT_STATES = [
    State.O0_REVEAL_SEED,
    State.O1_SHARE_KEYS,
    State.O2_CONFIRM,
    State.ON_MASKED_INPUT,
    State.ON_UNMASK,
]
SERVER_STATES = [*_ADVANCE]


def _epoch(co: ChronosCohort) -> list:
    logs = [co.run_offline()]
    for round_id in CFG.round_ids:
        co.idle()
        logs.append(co.run_round(round_id, inputs(CFG.dim)))
    return logs


def _record() -> tuple[dict[type, m.ServerMessage], dict[type, m.ClientMessage]]:
    to_victim: dict[type, m.ServerMessage] = {}
    from_victim: dict[type, m.ClientMessage] = {}

    def server_hook(u: int, msg: m.ServerMessage) -> m.ServerMessage:
        if u == VICTIM:
            to_victim.setdefault(type(msg), msg)
        return msg

    def client_hook(msg: m.ClientMessage) -> m.ClientMessage:
        if msg.sender == VICTIM:
            from_victim.setdefault(type(msg), msg)
        return msg

    co = cohort(CFG, 5, server_hook=server_hook, client_hook=client_hook)
    assert all(log.result is not None for log in _epoch(co)[1:])
    return to_victim, from_victim


TO_VICTIM, FROM_VICTIM = _record()


def test_tables_cover_the_phases():
    assert {s for s, _ in CLIENT_TABLE} == set(CLIENT_STATES)
    assert [s for s, _ in SERVER_TABLE] == SERVER_STATES


def _check_rounds_exact(logs: list) -> None:
    """Whatever happened to the victim, every round ends with the exact sum of its survivors."""
    for log in logs[1:]:
        assert log.result is not None, log.server_errors
        assert exact(log.result.total, log.result.survivors, CFG)


def _invalid(states: list[State], kinds: list[type], table: dict) -> list:
    """The (state, type) pairs outside a transition table (valid ones run in every epoch)."""
    return [
        pytest.param(s, k, id=f"{s.value}-{k.__name__}")
        for s in states
        for k in kinds
        if (s, k) not in table
    ]


@pytest.mark.parametrize(("state", "kind"), _invalid(CLIENT_STATES, SERVER_TYPES, CLIENT_TABLE))
def test_client_state_message_pairs(state, kind):
    co = cohort(CFG, 5)

    def server_hook(u: int, msg: m.ServerMessage) -> m.ServerMessage:
        if u == VICTIM and co.clients[u].state is state:
            return TO_VICTIM[kind]
        return msg

    co.server_hook = server_hook
    logs = _epoch(co)
    err = next(log.client_errors[VICTIM] for log in logs if VICTIM in log.client_errors)
    assert isinstance(err, RemoteProtocolError)
    assert err.state == state.value and err.client == VICTIM
    assert co.clients[VICTIM].state is State.ABORTED
    _check_rounds_exact(logs)
    assert VICTIM not in logs[-1].result.survivors


@pytest.mark.parametrize(("state", "kind"), _invalid(SERVER_STATES, CLIENT_TYPES, SERVER_TABLE))
def test_server_state_message_pairs(state, kind):
    co = cohort(CFG, 5)

    def client_hook(msg: m.ClientMessage) -> m.ClientMessage:
        if msg.sender == VICTIM and co.server.state is state:
            return FROM_VICTIM[kind]
        return msg

    co.client_hook = client_hook
    logs = _epoch(co)
    errors = [e for log in logs for e in log.server_errors]
    assert errors, "server accepted a message of the wrong type"
    assert isinstance(errors[0], RemoteProtocolError)
    assert errors[0].client == VICTIM and errors[0].state == state.value
    _check_rounds_exact(logs)


def test_server_refuses_api_misuse():
    server = ChronosServer(CFG, {})
    with pytest.raises(LocalProtocolError):
        server.open_round(1)  # offline phase not done
    cfg = config(N, N, 4, rounds=3)
    co = cohort(cfg, 6)
    co.run_offline()
    with pytest.raises(LocalProtocolError):
        co.server.advance()  # nothing is being collected between rounds
    co.run_round(2, inputs(cfg.dim))
    for used in (1, 2, 4):  # rounds only go forward, inside the epoch
        with pytest.raises(LocalProtocolError) as info:
            co.server.open_round(used)
        assert info.value.reason is AbortReason.ROUND_REUSED
    co.run_round(3, inputs(cfg.dim))
    assert co.server.state is State.EPOCH_OVER
    with pytest.raises(LocalProtocolError):
        co.server.open_round(4)
    with pytest.raises(RemoteProtocolError, match="not a participant"):
        co.server.handle(msgspec.structs.replace(FROM_VICTIM[m.EpochReady], sender=99))


def test_client_refuses_start_twice_and_foreign_messages():
    stores = keystores(CFG)
    client = ChronosClient(CFG, stores[0], directory(stores))
    client.start()
    with pytest.raises(LocalProtocolError):
        client.start()
    with pytest.raises(RemoteProtocolError) as info:
        client.receive(TO_VICTIM[m.SeedCommitments])  # addressed to the victim, not to client 0
    assert info.value.reason is AbortReason.MALFORMED_MESSAGE and client.state is State.ABORTED
    with pytest.raises(LocalProtocolError):
        other = keystores(config(8, 8, 5))
        ChronosClient(config(N, N, 4, epoch=2), other[7], directory(other))


def test_codec_roundtrip_and_rejections():
    for msg in TO_VICTIM.values():
        assert m.decode_server(m.encode(msg)) == msg
    for msg in FROM_VICTIM.values():
        assert m.decode_client(m.encode(msg)) == msg
    with pytest.raises(msgspec.MsgspecError):
        m.decode_client(m.encode(TO_VICTIM[m.RoundStart]))
    raw = msgspec.msgpack.encode(
        {
            "type": "chronos_masked_input",
            "epoch": 1,
            "round_id": 1,
            "sender": 1,
            "vector": b"",
            "x": 1,
        }
    )
    with pytest.raises(msgspec.MsgspecError):
        m.decode_client(raw)
