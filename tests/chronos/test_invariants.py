"""Each named CHRONOS invariant on its own."""

import msgspec
import pytest

from qflare.protocol.chronos import (
    Mode,
    ReleaseLedger,
    config_is_sound,
    excluded_not_survivor,
    never_release_both,
    never_reuse_counter,
    partners_meet_threshold,
    relay_roster,
    round_in_epoch,
)
from qflare.protocol.chronos.invariants import LedgerState
from qflare.protocol.errors import AbortReason, LocalProtocolError, RemoteProtocolError
from tests.chronos.helpers import config


def test_config_is_sound_and_dm_needs_a_majority_threshold():
    config_is_sound(config(5, 5, 3, mode=Mode.CHRONOS_DM), state="INIT")
    config_is_sound(config(5, 5, 2), state="INIT")  # chronos tolerates a minority threshold
    with pytest.raises(LocalProtocolError, match="2t > 5"):
        config_is_sound(config(5, 5, 2, mode=Mode.CHRONOS_DM), state="INIT")
    with pytest.raises(LocalProtocolError, match="2t > 3"):
        config_is_sound(config(8, 3, 1, mode=Mode.CHRONOS_DM), state="INIT")
    for bad in (
        config(5, 5, 6),
        config(5, 5, 3, rounds=0),
        config(5, 5, 3, first_round=0),
        msgspec.structs.replace(config(5, 5, 3), modulus_bits=16),
        msgspec.structs.replace(config(5, 5, 3), participants=(2, 1, 3)),
    ):
        with pytest.raises(LocalProtocolError):
            config_is_sound(bad, state="INIT")


def test_never_reuse_counter():
    never_reuse_counter(4, 5, state="ON_MASKED_INPUT")
    for reused in (4, 3, 0):
        with pytest.raises(LocalProtocolError) as info:
            never_reuse_counter(4, reused, state="ON_MASKED_INPUT", client=7)
        assert info.value.reason is AbortReason.ROUND_REUSED and info.value.client == 7


def test_round_in_epoch():
    cfg = config(5, 5, 3, first_round=10, rounds=3)
    for r in (10, 11, 12):
        round_in_epoch(cfg, r, state="S", client=1)
    for r in (9, 13):
        with pytest.raises(RemoteProtocolError):
            round_in_epoch(cfg, r, state="S", client=1)


def test_partners_meet_threshold():
    partners_meet_threshold({1, 2}, 3, state="O2_CONFIRM", client=0)
    with pytest.raises(RemoteProtocolError) as info:
        partners_meet_threshold({1}, 3, state="O2_CONFIRM", client=0)
    assert info.value.reason is AbortReason.TOO_FEW_CLIENTS


def test_never_release_both_within_and_across_rounds():
    empty = LedgerState()
    never_release_both(empty, 1, {1, 2}, {3}, state="ON_UNMASK")
    with pytest.raises(RemoteProtocolError) as info:
        never_release_both(empty, 1, {1, 2}, {2, 3}, state="ON_UNMASK")
    assert info.value.client == 2 and info.value.reason is AbortReason.INVARIANT_VIOLATED
    ledger = LedgerState(self_mask=((1, 1),), key=((3, 1),), rounds=(1,))
    with pytest.raises(RemoteProtocolError):  # key share of 1 in the round its self mask went out
        never_release_both(ledger, 1, (), {1}, state="ON_UNMASK")
    never_release_both(ledger, 2, (), {1}, state="ON_UNMASK")  # another round, another key
    with pytest.raises(RemoteProtocolError, match="excluded"):  # 3's key went out in round 1
        never_release_both(ledger, 2, {3}, (), state="ON_UNMASK")


def test_release_ledger_records_once_per_round_and_tracks_exclusions():
    ledger = ReleaseLedger()
    ledger.record(1, {0, 1}, {2}, state="ON_UNMASK")
    assert ledger.excluded == {2}
    with pytest.raises(RemoteProtocolError) as info:
        ledger.record(1, {0}, (), state="ON_UNMASK")
    assert info.value.reason is AbortReason.ROUND_REUSED
    with pytest.raises(RemoteProtocolError):
        ledger.record(2, {2}, (), state="ON_UNMASK")
    ledger.record(2, {0, 1}, {2}, state="ON_UNMASK")  # 2 stays dropped: its round-2 key share
    assert ledger.state.rounds == (1, 2)
    assert ReleaseLedger(ledger.state).excluded == {2}  # survives persistence


def test_excluded_not_survivor():
    excluded_not_survivor({4}, {1, 2, 3}, state="ON_UNMASK")
    with pytest.raises(RemoteProtocolError) as info:
        excluded_not_survivor({4}, {1, 4}, state="ON_UNMASK")
    assert info.value.client == 4


def test_relay_roster_is_symmetric_and_meets_the_threshold():
    directory = {
        0: frozenset({0, 1, 2}),
        1: frozenset({0, 1, 2}),
        2: frozenset({0, 1, 2, 3}),
        3: frozenset({2, 3, 4}),
        4: frozenset({3, 4}),
    }
    everyone = {v: d - {v} for v, d in directory.items()}
    partners = relay_roster(directory, everyone, 3)
    assert set(partners) == {0, 1, 2}  # 4 has one partner; then 3 has only 2 left
    for v, ps in partners.items():
        assert len(ps) + 1 >= 3 and all(v in partners[w] for w in ps)
    assert relay_roster(directory, {0: everyone[0], 1: everyone[1]}, 3) == {}


def test_relay_roster_pairs_only_clients_that_shared_with_each_other():
    directory = {v: frozenset(range(4)) for v in range(4)}
    shared = {v: frozenset(range(4)) - {v} for v in range(4)}
    shared[0] = frozenset({1, 2})  # client 0 rejected 3's advertisement
    partners = relay_roster(directory, shared, 2)
    assert 3 not in partners[0] and 0 not in partners[3]
    assert partners[1] == frozenset({0, 2, 3})
