import pytest

from qflare.protocol.errors import AbortReason, LocalProtocolError, RemoteProtocolError
from qflare.protocol.secagg import (
    ReleaseLog,
    RoundRegistry,
    never_release_both_shares,
    never_reuse_round,
    survivors_and_dropped_disjoint,
)


def test_never_release_both_shares():
    never_release_both_shares({1, 2}, {3}, state="R4_UNMASK")
    with pytest.raises(RemoteProtocolError) as info:
        never_release_both_shares({1, 2}, {2, 3}, state="R4_UNMASK")
    assert info.value.client == 2 and info.value.reason is AbortReason.INVARIANT_VIOLATED


def test_release_log_accumulates_across_calls():
    log = ReleaseLog()
    log.record(self_mask={1, 2}, key={3}, state="R4_UNMASK")
    with pytest.raises(RemoteProtocolError):
        log.record(self_mask=set(), key={1}, state="R4_UNMASK")
    assert log.self_mask == {1, 2} and log.key == {3}


def test_survivors_and_dropped_disjoint_and_threshold():
    survivors_and_dropped_disjoint({1, 2, 3}, {4}, 3, state="R4_UNMASK")
    with pytest.raises(RemoteProtocolError) as info:
        survivors_and_dropped_disjoint({1, 2, 3}, {3, 4}, 3, state="R4_UNMASK")
    assert info.value.client == 3
    with pytest.raises(RemoteProtocolError) as info:
        survivors_and_dropped_disjoint({1, 2}, {4}, 3, state="R4_UNMASK")
    assert info.value.reason is AbortReason.TOO_FEW_CLIENTS


def test_never_reuse_round():
    never_reuse_round(set(), "s", 1, state="R0_ADVERTISE_KEYS")
    with pytest.raises(LocalProtocolError):
        never_reuse_round({("s", 1)}, "s", 1, state="R0_ADVERTISE_KEYS")
    reg = RoundRegistry([("s", 1)])
    reg.claim("s", 2, state="R0")
    reg.claim("other", 1, state="R0")
    with pytest.raises(LocalProtocolError):
        reg.claim("s", 2, state="R0")
    assert reg.used() == {("s", 1), ("s", 2), ("other", 1)}
