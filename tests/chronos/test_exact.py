"""Exact aggregates over random dropout patterns, offline and online, in both modes."""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from qflare.protocol.chronos import OFFLINE, EpochConfig, Mode, State
from qflare.sim.chronos_cohort import ChronosCohort
from tests.chronos.helpers import cohort, config, exact, inputs

N, ROUNDS = 8, 3
ONLINE_DROPS = st.sampled_from([State.ON_MASKED_INPUT, State.ON_UNMASK])
OFFLINE_PATTERN = st.dictionaries(st.integers(0, N - 1), st.sampled_from(OFFLINE), max_size=2)
ROUND_PATTERNS = st.lists(
    st.dictionaries(st.integers(0, N - 1), ONLINE_DROPS, max_size=3),
    min_size=ROUNDS,
    max_size=ROUNDS,
)


class CompleteGraphModel:
    """What an honest complete-graph epoch must do, computed independently of the machines."""

    def __init__(self, cfg: EpochConfig, offline: dict[int, State]) -> None:
        self.cfg = cfg
        advertised = {u for u in cfg.participants if offline.get(u) != State.O0_ADVERTISE_KEYS}
        # silent from the seed step or O1 on: no shares (a complete graph has no seed step)
        shared = {u for u in advertised if offline.get(u) in (None, State.O2_CONFIRM)}
        self.ok = len(advertised) >= cfg.t and len(shared) >= cfg.t
        self.roster = shared if self.ok else set()
        self.gone = set(offline)
        self.excluded: set[int] = set()
        self.recovered: set[int] = set()

    def round(self, drops: dict[int, State]) -> tuple[bool, tuple[int, ...]]:
        """(must complete, survivors) of the next round; updates exclusions."""
        active = self.roster - self.excluded
        survivors = {u for u in active - self.gone if drops.get(u) != State.ON_MASKED_INPUT}
        if len(active) < self.cfg.t or len(survivors) < self.cfg.t:
            return False, tuple(sorted(survivors))
        known = self.recovered if not self.cfg.double_masking else set()
        listed = self.roster - survivors - known
        responders = {u for u in survivors if drops.get(u) != State.ON_UNMASK}
        self.excluded |= listed
        if not self.cfg.double_masking and not listed:
            return True, tuple(sorted(survivors))
        done = len(responders) >= self.cfg.t
        if done and not self.cfg.double_masking:
            self.recovered |= listed
        return done, tuple(sorted(survivors))


def _run_epoch(co: ChronosCohort, offline, patterns, model: CompleteGraphModel | None) -> None:
    cfg = co.cfg
    log = co.run_offline(offline)
    assert not log.client_errors
    if model is not None:
        assert (co.server.state is State.ON_IDLE) == model.ok, log.server_errors
        assert co.server.roster == model.roster
    event(f"offline: {co.server.state.value}")
    if co.server.state is not State.ON_IDLE:
        assert all(e.reason.value == "too_few_clients" for e in log.server_errors)
        return
    excluded_so_far: set[int] = set()
    for round_id, drops in zip(cfg.round_ids, patterns, strict=True):
        co.idle()
        rlog = co.run_round(round_id, inputs(cfg.dim, cfg.modulus_bits), drops)
        assert not rlog.client_errors, rlog.client_errors
        result = co.server.results[-1] if co.server.results else None
        if model is not None:
            must, survivors = model.round(drops)
            assert (rlog.result is not None) == must, (rlog.server_errors, drops)
            if must:
                assert rlog.result is not None and rlog.result.survivors == survivors
        outcome = "failed" if rlog.result is None else f"unmask={rlog.result.unmask_step}"
        event(f"round {round_id}: {outcome}")
        if rlog.result is not None:
            assert exact(rlog.result.total, rlog.result.survivors, cfg)
            assert not set(rlog.result.survivors) & excluded_so_far  # excluded never rejoin
        else:
            reasons = {e.reason.value for e in rlog.server_errors}
            assert reasons <= {"too_few_clients", "reconstruction_failed"}, rlog.server_errors
        if result is not None:
            excluded_so_far |= set(result.recovered)
        if co.server.state is State.ABORTED:
            return


@settings(max_examples=120)
@given(
    mode=st.sampled_from(list(Mode)),
    offline=OFFLINE_PATTERN,
    patterns=ROUND_PATTERNS,
    seed=st.integers(0, 2**31),
)
def test_complete_graph_exact_sums_match_the_model(mode, offline, patterns, seed):
    cfg = config(N, N, 5, mode=mode, rounds=ROUNDS)
    _run_epoch(cohort(cfg, seed), offline, patterns, CompleteGraphModel(cfg, offline))


@settings(max_examples=100)
@given(
    mode=st.sampled_from(list(Mode)),
    offline=OFFLINE_PATTERN,
    patterns=ROUND_PATTERNS,
    seed=st.integers(0, 2**31),
    bits=st.sampled_from([32, 64]),
)
def test_sparse_graph_exact_sum_or_clean_failure(mode, offline, patterns, seed, bits):
    cfg = config(N, 5, 3, mode=mode, rounds=ROUNDS, dim=24, bits=bits)
    _run_epoch(cohort(cfg, seed), offline, patterns, None)


def test_no_dropouts_chronos_needs_one_online_message_per_round():
    cfg = config(12, 7, 4, rounds=2)
    co = cohort(cfg, 1)
    co.run_offline()
    for round_id in cfg.round_ids:
        co.idle()
        log = co.run_round(round_id, inputs(cfg.dim))
        assert log.result is not None and not log.result.unmask_step
        assert [s.state for s in log.steps] == [State.ON_MASKED_INPUT]
        assert log.result.survivors == tuple(range(12))
        assert exact(log.result.total, log.result.survivors, cfg)


def test_chronos_dm_always_takes_the_unmask_step():
    cfg = config(7, 7, 4, mode=Mode.CHRONOS_DM, rounds=1)
    co = cohort(cfg, 2)
    co.run_offline()
    log = co.run_round(1, inputs(cfg.dim))
    assert log.result is not None and log.result.unmask_step
    assert [s.state for s in log.steps] == [State.ON_MASKED_INPUT, State.ON_UNMASK]
    assert exact(log.result.total, tuple(range(7)), cfg)
