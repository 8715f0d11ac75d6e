"""Trajectory analysis: smoothed derivatives, change points (exact, BIC-chosen), bootstrap CIs.

Phases are regimes of *change*: exploration (little learned yet), transition (validity climbing),
specialization (validity high, diversity and novelty still eroding). So a phase boundary is a
change in slope, and the change-point model is continuous piecewise-linear (ruptures' `clinear`
cost, solved exactly by dynamic programming). The number of breaks minimises BIC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ruptures
from scipy.signal import savgol_filter


def derivative(curves: np.ndarray, window: int = 5, polyorder: int = 2) -> np.ndarray:
    """Savitzky–Golay first derivative along the last axis (per cycle)."""
    window = min(window, curves.shape[-1] - (1 - curves.shape[-1] % 2))
    if window <= polyorder:
        return np.gradient(curves, axis=-1)
    return savgol_filter(curves, window, polyorder, deriv=1, axis=-1, mode="interp")


def _fit(signal: np.ndarray, n_breaks: int, min_size: int) -> tuple[list[int], float]:
    algo = ruptures.Dynp(model="clinear", min_size=min_size, jump=1).fit(signal)
    ends = algo.predict(n_bkps=n_breaks)
    return ends[:-1], algo.cost.sum_of_costs(ends)


def change_points(
    per_trial: np.ndarray,
    *,
    max_breaks: int = 4,
    min_size: int = 3,
    n_breaks: int | None = None,
) -> list[float]:
    """Phase boundaries of the trial mean of `per_trial (trials, cycles, series)`, in cycle units
    (7.5 = between cycles 7 and 8).

    Series are standardized with their pooled standard deviation so none dominates. Breaks are
    fitted exactly on the trial-averaged curves. With `n_breaks=None` their count minimises
    BIC = RSS/σ² + p·log(N): RSS of the piecewise-linear fit to the mean curves, σ² the variance
    of a trial mean estimated from the scatter of the trials (σ²_trial / (trials − 1)),
    p = series·(breaks + 2) + breaks free values, N = cycles·series points. With one trial (a
    real loop) σ² comes from the curve's second differences (var(Δ²x) = 6σ² for white noise about
    a line), so a kink inflates it a little, erring towards fewer breaks. A smooth curve has no
    true breaks, so with more trials BIC resolves more of its bends: the count is a finding.
    """
    data = np.asarray(per_trial, dtype=float)
    if data.ndim == 2:
        data = data[None]
    sd = data.reshape(-1, data.shape[-1]).std(axis=0)
    data = (data - data.mean(axis=(0, 1))) / np.where(sd > 0, sd, 1.0)
    mean = data.mean(axis=0)
    if n_breaks is not None:
        return [e + 0.5 for e in _fit(mean, n_breaks, min_size)[0]]
    trials, cycles, series = data.shape
    if trials > 1:  # variance of the trial mean at one point, from the trials' scatter about it
        noise = float(((data - mean) ** 2).mean()) / (trials - 1)
    else:  # one run (a real loop): from second differences, which cancel any straight piece
        noise = float((np.diff(mean, n=2, axis=0) ** 2).mean()) / 6 if cycles > 2 else 0.0
    noise = max(noise, 1e-12)
    best: tuple[float, list[int]] | None = None
    for m in range(0, max_breaks + 1):
        if (m + 1) * min_size > cycles:
            break
        ends, rss = _fit(mean, m, min_size) if m else ([], _linear_rss(mean))
        bic = rss / noise + (series * (m + 2) + m) * np.log(cycles * series)
        if best is None or bic < best[0]:
            best = (bic, ends)
    if best is None:  # shorter than one segment: nothing to split
        return []
    return [e + 0.5 for e in best[1]]  # index e starts the next segment: cycle e + 1


def _linear_rss(x: np.ndarray) -> float:
    t = np.arange(len(x))
    coef = np.polyfit(t, x, 1)
    return float(((x - np.outer(t, coef[0]) - coef[1]) ** 2).sum())


@dataclass(frozen=True)
class Phases:
    """Detected boundaries on the trial mean, with percentile bootstrap intervals over trials."""

    boundaries: list[float]
    low: list[float]
    high: list[float]
    three_phase_fit: list[float]  # the best two-break fit, whatever BIC prefers


def phases(
    per_trial: np.ndarray, *, n_boot: int = 200, seed: int = 0, level: float = 0.9, **kw
) -> Phases:
    """Detect phases on the trial-averaged `per_trial (trials, cycles, series)` curves.

    The bootstrap resamples trials with replacement and refits with the same number of breaks,
    so each interval belongs to one boundary.
    """
    per_trial = np.asarray(per_trial, dtype=float)
    found = change_points(per_trial, **kw)
    min_size = kw.get("min_size", 3)
    fits = per_trial.shape[1] >= 3 * min_size  # room for three phases
    forced = change_points(per_trial, n_breaks=2, min_size=min_size) if fits else []
    if not found or n_boot <= 0:
        return Phases(found, list(found), list(found), forced)
    rng = np.random.default_rng(seed)
    trials = per_trial.shape[0]
    draws = np.array(
        [
            change_points(
                per_trial[rng.integers(0, trials, trials)],
                n_breaks=len(found),
                min_size=min_size,
            )
            for _ in range(n_boot)
        ]
    )
    tail = (1 - level) / 2 * 100
    return Phases(
        found,
        list(np.percentile(draws, tail, axis=0)),
        list(np.percentile(draws, 100 - tail, axis=0)),
        forced,
    )
