import numpy as np
import pytest

from archrefine.analysis import change_points, derivative, phases


def piecewise(breaks, cycles=22, slopes=(0.0, 1.0, 0.0)):
    t = np.arange(cycles, dtype=float)
    y, level, edges = np.zeros(cycles), 0.0, [0, *breaks, cycles]
    for s, a, b in zip(slopes, edges[:-1], edges[1:]):
        y[a:b] = level + s * (t[a:b] - a)
        level = y[b - 1] + s
    return y


def noisy_trials(curve, trials=40, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    return curve[None, :, None] + rng.normal(0, noise, (trials, len(curve), 1))


def test_recovers_two_slope_changes_and_their_count():
    curve = piecewise([7, 15])  # kinks at indices 7 and 15, i.e. after cycles 8 and 16
    found = change_points(noisy_trials(curve))
    assert found == [8.5, 16.5]


def test_a_straight_line_has_no_phases():
    assert change_points(noisy_trials(np.linspace(0, 5, 22))) == []


def test_bootstrap_interval_contains_the_estimate():
    ph = phases(noisy_trials(piecewise([6, 14]), noise=0.5), n_boot=50)
    assert len(ph.boundaries) == 2
    for b, lo, hi in zip(ph.boundaries, ph.low, ph.high):
        assert lo <= b <= hi


def test_derivative_of_a_line_is_its_slope():
    assert np.allclose(derivative(np.arange(22) * 0.5), 0.5)
    assert derivative(np.array([0.0, 1.0, 4.0])) == pytest.approx([0.0, 2.0, 4.0])  # t**2


def test_short_runs_have_no_three_phase_fit():
    ph = phases(noisy_trials(np.linspace(0, 1, 6)), n_boot=0)
    assert ph.three_phase_fit == []
