import numpy as np
import pytest

from archrefine.core.analysis import (
    bootstrap_rows,
    change_points,
    derivative,
    fit_breaks,
    peak_time,
    phases,
    row_fits,
    row_means,
)


def piecewise(kinks, cycles=22, slopes=(0.0, 1.0, 0.0)):
    """A continuous polyline over cycles 1…cycles with its kinks at the given cycles."""
    t = np.arange(1, cycles + 1, dtype=float)
    y = np.zeros(cycles)
    for s0, s1, k in zip(slopes[:-1], slopes[1:], kinks):
        y += (s1 - s0) * np.clip(t - k, 0, None)
    return y + slopes[0] * (t - 1)


def noisy_trials(curve, trials=40, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    return curve[None, :, None] + rng.normal(0, noise, (trials, len(curve), 1))


def test_an_exact_polyline_is_fitted_exactly():
    idx, rss = fit_breaks(piecewise([8, 16])[:, None], 2)
    assert [i + 1 for i in idx] == [8, 16] and rss == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("trials", [5, 200])
def test_two_kinks_are_found_near_the_truth_whatever_the_trial_count(trials):
    curve = piecewise([8, 16], slopes=(-0.2, 1.0, 0.1))
    found = change_points(noisy_trials(curve, trials=trials, noise=0.5, seed=trials))
    assert len(found) == 2
    assert abs(found[0] - 8) <= 1 and abs(found[1] - 16) <= 1


def test_a_smooth_curve_gets_the_same_count_at_5_and_200_trials():
    """The count is an effect size of the mean curve: more trials do not resolve more bends."""
    t = np.arange(1, 23, dtype=float)
    curve = 3 / (1 + np.exp(-(t - 11) / 2.5))
    counts = {n: len(change_points(noisy_trials(curve, trials=n, noise=0.2))) for n in (5, 200)}
    assert counts[5] == counts[200], counts


@pytest.mark.parametrize("curve", [np.linspace(0, 5, 22), np.linspace(3, -1, 22)])
def test_curves_without_phase_structure_do_not_get_two_boundaries(curve):
    assert len(change_points(noisy_trials(curve, trials=100, noise=0.1))) != 2


def test_bootstrap_interval_contains_the_estimate_and_intervals_are_numbers():
    ph = phases(noisy_trials(piecewise([7, 15]), noise=0.5), n_boot=50)
    assert len(ph.boundaries) == 2 and ph.three_phase_fit == ph.boundaries
    for b, lo, hi in zip(ph.boundaries, ph.low, ph.high):
        assert isinstance(lo, float) and lo <= b <= hi
    assert len(ph.r2) == 5 and ph.r2[2] - ph.r2[1] >= ph.min_gain > ph.r2[3] - ph.r2[2]


def test_short_runs_have_no_three_phase_fit():
    ph = phases(noisy_trials(np.linspace(0, 1, 6)), n_boot=0)
    assert ph.three_phase_fit == []


def test_derivative_of_a_line_is_its_slope():
    assert np.allclose(derivative(np.arange(22) * 0.5), 0.5)
    assert derivative(np.array([0.0, 1.0, 4.0])) == pytest.approx([0.0, 2.0, 4.0])  # t**2


@pytest.mark.parametrize("centre", [7.0, 8.3, 8.5, 9.75])
def test_peak_time_resolves_a_steepest_rise_between_cycles(centre):
    t = np.arange(1, 23, dtype=float)
    rise = peak_time(1 / (1 + np.exp(-(t - centre) / 1.5)))
    fall = peak_time(-1 / (1 + np.exp(-(t - centre) / 1.5)), sign=-1)
    assert rise == pytest.approx(centre, abs=0.15) and fall == pytest.approx(centre, abs=0.15)


def test_bootstrap_rows_are_the_sample_then_seeded_resamples():
    rows = bootstrap_rows(10, 30, seed=4)
    assert rows.shape == (31, 10) and (rows[0] == np.arange(10)).all()
    assert (rows == bootstrap_rows(10, 30, seed=4)).all()
    assert bootstrap_rows(1, 30, seed=4).shape == (1, 1)  # one trial: nothing to resample


def test_row_means_average_each_resample_and_skip_nan():
    data = np.array([[1.0, np.nan], [3.0, 2.0], [5.0, 4.0]])
    rows = np.array([[0, 1, 2], [0, 0, 1]])
    assert row_means(data, rows) == pytest.approx(np.array([[3.0, 3.0], [5 / 3, 2.0]]))


def test_r2_of_every_kink_count_is_a_least_squares_share_of_variance():
    """On one noisy run the kinks' chords through noisy end points can fit worse than the mean;
    the least-squares refit keeps R² in [0, 1], and a curved but phaseless bowl still gains from
    kinks (C1's phase-shape checks, not the count, reject it: tests/test_claims.py)."""
    rng = np.random.default_rng(3)
    one_run = np.linspace(0, 1, 22)[None, :, None] + rng.normal(0, 0.3, (1, 22, 1))
    bowl = 0.02 * (np.arange(22) - 10.0) ** 2
    for data in (one_run, noisy_trials(bowl, trials=100, noise=0.1)):
        mean = data.mean(axis=0)
        r2 = row_fits(((mean - mean.mean()) / mean.std())[None]).r2[0]
        assert ((r2 >= 0) & (r2 <= 1 + 1e-12)).all(), r2
