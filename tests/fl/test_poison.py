"""Poisoning attacks: exact crafted vectors, data rewrites of the right clients only."""

from __future__ import annotations

from collections.abc import Mapping
from statistics import NormalDist

import numpy as np
import pytest

from qflare.fl import AggregateResult, PlainAggregator, Update
from qflare.fl.poison import (
    ATTACKS,
    ALIEAttack,
    BackdoorAttack,
    ClientPoison,
    GaussianAttack,
    IPMAttack,
    LabelFlipAttack,
    PoisonedAggregator,
    ScalingAttack,
    SignFlipAttack,
    alie_z,
    make_attack,
    stamp_trigger,
)

HONEST = {
    0: np.array([1.0, 2.0, -1.0], np.float32),
    1: np.array([3.0, 2.0, 1.0], np.float32),
    2: np.array([2.0, 5.0, 0.0], np.float32),
}
OWN = {7: np.array([0.5, -1.0, 2.0], np.float32), 9: np.array([1.0, 1.0, 1.0], np.float32)}


def test_sign_flip_uploads_minus_s_times_the_own_update():
    out = SignFlipAttack(scale=3.0).craft(1, OWN, HONEST)
    assert set(out) == {7, 9}
    np.testing.assert_array_equal(out[7], np.array([-1.5, 3.0, -6.0], np.float32))
    np.testing.assert_array_equal(out[9], np.array([-3.0, -3.0, -3.0], np.float32))
    assert out[7].dtype == np.float32


def test_scaling_boosts_by_n_over_m_or_the_given_scale():
    out = ScalingAttack().craft(1, OWN, HONEST)  # n = 5, m = 2
    np.testing.assert_array_equal(out[7], np.float32(2.5) * OWN[7])
    np.testing.assert_array_equal(ScalingAttack(scale=10).craft(1, OWN, HONEST)[9], 10 * OWN[9])


def test_alie_z_follows_the_paper():
    # n = 50, m = 12 (the paper's example): s = 26 - 12 = 14, z = Phi^-1(36 / 50)
    assert alie_z(50, 12) == pytest.approx(NormalDist().inv_cdf(36 / 50))
    assert alie_z(10, 2) == pytest.approx(NormalDist().inv_cdf(0.6))  # s = 4
    assert alie_z(20, 4) == pytest.approx(NormalDist().inv_cdf(0.65))  # s = 7


def test_alie_uploads_mean_minus_z_std_of_the_honest_updates():
    rows = np.stack(list(HONEST.values())).astype(np.float64)
    z = alie_z(5, 2)
    expected = (rows.mean(axis=0) - z * rows.std(axis=0)).astype(np.float32)
    out = ALIEAttack().craft(3, OWN, HONEST)
    for c in OWN:
        np.testing.assert_array_equal(out[c], expected)
    fixed = ALIEAttack(z=1.0).craft(3, OWN, HONEST)[7]
    np.testing.assert_allclose(fixed, rows.mean(0) - rows.std(0), rtol=1e-6)


def test_ipm_uploads_minus_epsilon_times_the_honest_mean():
    out = IPMAttack(epsilon=0.5).craft(1, OWN, HONEST)
    np.testing.assert_allclose(out[9], [-1.0, -1.5, 0.0], rtol=0, atol=1e-7)
    assert np.array_equal(out[7], out[9])


def test_gaussian_noise_is_seeded_per_round_and_client():
    a = GaussianAttack(sigma=2.0, seed=1).craft(4, OWN, HONEST)
    b = GaussianAttack(sigma=2.0, seed=1).craft(4, OWN, HONEST)
    c = GaussianAttack(sigma=2.0, seed=1).craft(5, OWN, HONEST)
    assert np.array_equal(a[7], b[7]) and not np.array_equal(a[7], a[9])
    assert not np.array_equal(a[7], c[7])
    big = GaussianAttack(sigma=2.0).craft(1, {0: np.zeros(20_000, np.float32)}, {})[0]
    assert big.std() == pytest.approx(2.0, rel=0.05)


class _Recorder:
    def __init__(self) -> None:
        self.seen: dict[int, Update] = {}

    def aggregate(self, round_id: int, updates: Mapping[int, Update]) -> AggregateResult:
        self.seen = dict(updates)
        return PlainAggregator().aggregate(round_id, updates)


def test_the_poisoned_aggregator_rewrites_malicious_updates_only():
    updates = {c: (u, 10 + c) for c, u in {**HONEST, **OWN}.items()}
    inner = _Recorder()
    result = PoisonedAggregator(inner, {7, 9}, make_attack("sign-flip")).aggregate(1, updates)
    for c in HONEST:  # bit-identical: the very same arrays and weights
        assert inner.seen[c][0] is updates[c][0] and inner.seen[c][1] == updates[c][1]
    np.testing.assert_array_equal(inner.seen[7][0], -4.0 * OWN[7])
    assert inner.seen[9][1] == 19
    assert result.num_clients == 5


def test_data_attacks_and_absent_attackers_leave_the_round_alone():
    updates = {c: (u, 1) for c, u in HONEST.items()}
    inner = _Recorder()
    PoisonedAggregator(inner, {7}, make_attack("alie")).aggregate(1, updates)  # 7 absent
    assert all(inner.seen[c][0] is updates[c][0] for c in HONEST)
    PoisonedAggregator(inner, {0}, make_attack("backdoor")).aggregate(1, updates)
    assert inner.seen[0][0] is updates[0][0]


def _data(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
    return x, np.arange(n, dtype=np.int64) % 10


def test_label_flip_maps_y_to_9_minus_y_or_a_mapping():
    x, y = _data()
    x2, y2 = LabelFlipAttack().poison(0, x, y)
    np.testing.assert_array_equal(y2, 9 - y)
    np.testing.assert_array_equal(x2, x)
    _, y3 = LabelFlipAttack(mapping={1: 7}).poison(0, x, y)
    np.testing.assert_array_equal(y3, np.where(y == 1, 7, y))


def test_backdoor_stamps_a_corner_square_and_the_target_on_a_fraction():
    x, y = _data()
    attack = BackdoorAttack(target=3, fraction=0.5, size=2, seed=0)
    x2, y2 = attack.poison(5, x, y)
    changed = np.any(x2 != x, axis=(1, 2, 3))
    assert changed.sum() == 20
    assert np.all(y2[changed] == 3) and np.array_equal(y2[~changed], y[~changed])
    assert np.all(x2[changed][..., -2:, -2:] == x.max())
    np.testing.assert_array_equal(x2[changed][..., :-2, :], x[changed][..., :-2, :])
    again, _ = attack.poison(5, x, y)
    assert np.array_equal(again, x2)  # seeded per (seed, client)
    trig = attack.triggered_test(x, y)
    assert len(trig) == int(np.sum(y != 3))
    assert attack.success_rate([3, 3, 1, 3]) == 0.75
    assert stamp_trigger(np.zeros((1, 1, 28, 28), np.float32), value=1.0).sum() == 16  # 4x4


def test_client_poison_changes_only_the_malicious_clients():
    x, y = _data()
    poison = ClientPoison(LabelFlipAttack(), frozenset({2}))
    hx, hy = poison(1, x, y)
    assert hx is x and hy is y
    _, my = poison(2, x, y)
    np.testing.assert_array_equal(my, 9 - y)


def test_make_attack_knows_every_name_and_refuses_the_rest():
    for name in ATTACKS:
        assert make_attack(name).name == name
    with pytest.raises(ValueError, match="unknown attack 'nope'"):
        make_attack("nope")
    with pytest.raises(ValueError, match="attack 'ipm'"):
        make_attack("ipm", scale=2.0)
    with pytest.raises(ValueError, match="attack 'backdoor'"):
        make_attack("backdoor", sigma=1.0)
