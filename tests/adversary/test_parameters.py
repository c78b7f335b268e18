"""Attack 1: a server that chooses the threshold, the graph size or the cohort.

With n = 4, the complete graph and t = 2, a server that shows survivor set {0, 1} to clients 0
and 1 and {2, 3} to clients 2 and 3 used to collect self-mask shares of one half and key shares of
the other: all four inputs. Clients now refuse such parameters before anything leaves them.
"""

from __future__ import annotations

import msgspec
import pytest

from qflare.crypto import DeterministicRng
from qflare.protocol import messages as m
from qflare.protocol.errors import AbortReason, LocalProtocolError
from qflare.protocol.graph import find_params
from qflare.protocol.policy import ClientPolicy, check_round_params
from qflare.protocol.secagg import RoundRegistry, SecAggClient, State
from qflare.sim.cohort import Cohort
from tests.adversary.helpers import Loot
from tests.protocol.helpers import authority, config, directory, inputs, signers


def _split_views(groups: list[set[int]]):
    """A server showing each group a survivor set that contains only that group."""

    def lie(u: int, msg: m.ServerMessage) -> m.ServerMessage:
        group = next(g for g in groups if u in g)
        if isinstance(msg, m.ConsistencyRequest):
            return msgspec.structs.replace(msg, survivors=tuple(sorted(group)))
        if isinstance(msg, m.UnmaskRequest):
            others = tuple(sorted(set(msg.survivors) - group))
            return msgspec.structs.replace(
                msg, survivors=tuple(sorted(group)), dropped=(*msg.dropped, *others)
            )
        return msg

    return lie


def test_the_split_view_attack_with_t_2_of_4_is_refused_up_front():
    loot = Loot()
    cohort = Cohort(
        config(4, 4, 2),
        seed=1,
        signers=signers(4),
        authority=authority(4),
        server_hook=_split_views([{0, 1}, {2, 3}]),
        client_hook=loot,
        server_verifies=False,
    )
    res = cohort.run(inputs(16))
    assert set(res.client_errors) == {0, 1, 2, 3}
    for err in res.client_errors.values():
        assert isinstance(err, LocalProtocolError)
        assert err.reason is AbortReason.PARAMS_REFUSED
        assert "threshold_is_majority" in str(err)
    assert not loot.shares and not loot.unmask  # nothing left any client
    assert res.total is None


def test_the_split_view_attack_with_a_majority_threshold_learns_nothing():
    """With t = 3 of 4 (what the policy accepts) each group vouches only for itself: no shares."""
    loot = Loot()
    res = Cohort(
        config(4, 4, 3),
        seed=2,
        signers=signers(4),
        authority=authority(4),
        server_hook=_split_views([{0, 1}, {2, 3}]),
        client_hook=loot,
        server_verifies=False,
    ).run(inputs(16))
    assert res.total is None
    assert loot.unmask == {}  # every client refused: only two signatures vouch for its view
    for err in res.client_errors.values():
        assert err.reason in (AbortReason.TOO_FEW_CLIENTS, AbortReason.INVARIANT_VIOLATED)


@pytest.mark.parametrize(
    ("n", "k", "t", "rule"),
    [
        (2, 2, 2, "cohort_large_enough"),
        (100, 7, 7, "params_meet_policy"),  # below the smallest private k (9) for n = 100
        (100, 29, 15, "params_meet_policy"),  # the finder's k with a weaker t (it needs 18)
        (100, 101, 51, "params_meet_policy"),  # complete graph, 5 corrupt: needs 2t > 105
        (10, 6, 4, "threshold_is_majority"),  # even k below n
        (10, 5, 6, "threshold_is_majority"),  # t above k
    ],
)
def test_weaker_than_policy_parameters_are_refused_naming_the_rule(n, k, t, rule):
    with pytest.raises(LocalProtocolError) as info:
        check_round_params(n, k, t, ClientPolicy(), state="INIT")
    assert info.value.reason is AbortReason.PARAMS_REFUSED
    assert rule in str(info.value)


@pytest.mark.parametrize("n", [3, 5, 20, 100, 1000])
def test_the_servers_finder_parameters_pass_the_default_policy(n):
    p = find_params(n)
    check_round_params(n, p.k, p.t, ClientPolicy(), state="INIT")


def test_a_stricter_client_policy_refuses_what_a_laxer_one_accepts():
    p = find_params(100)  # planned for 5 % corrupt clients
    check_round_params(100, p.k, p.t, ClientPolicy(corrupt_fraction=0.05), state="INIT")
    with pytest.raises(LocalProtocolError):
        check_round_params(100, p.k, p.t, ClientPolicy(corrupt_fraction=0.2), state="INIT")


def test_refusal_happens_before_any_key_or_round_id_is_used():
    registry = RoundRegistry()
    with pytest.raises(LocalProtocolError):
        SecAggClient(config(4, 4, 2), 0, signers(4)[0], directory(4), DeterministicRng(1), registry)
    assert registry.used() == frozenset()


def test_malformed_configurations_are_refused():
    bad = msgspec.structs.replace(config(5, 5, 3), participants=(0, 2, 1, 3, 4))
    with pytest.raises(LocalProtocolError) as info:
        SecAggClient(bad, 0, signers(5)[0], directory(5), DeterministicRng(1), RoundRegistry())
    assert info.value.reason is AbortReason.PARAMS_REFUSED
    assert (
        SecAggClient(
            config(5, 5, 3), 0, signers(5)[0], directory(5), DeterministicRng(1), RoundRegistry()
        ).state
        is State.R0_ADVERTISE_KEYS
    )
