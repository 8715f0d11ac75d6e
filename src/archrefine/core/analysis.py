"""Trajectory analysis: smoothed derivatives, sub-cycle peak times, phase fits, bootstrap rows.

Phases are regimes of *change*: exploration (little learned yet), transition (validity climbing),
specialization (validity high, diversity and novelty still eroding). So a phase boundary is a
change in slope, and the model is continuous piecewise-linear (ruptures' `clinear` cost, solved
exactly by dynamic programming). How many kinks is an effect size, not a significance test:
kinks count while further ones would explain at least `MIN_GAIN` of the curves' variance each,
so more trials make the estimate more precise without resolving ever more bends of a smooth
curve (docs/claims.md).

Everything here works on *rows*: row 0 is the full sample, rows 1… are bootstrap resamples of
the trials, the same resamples for every condition (`bootstrap_rows`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

MIN_GAIN = 0.02  # share of variance a further kink must explain to count (docs/claims.md, C1)
MAX_BREAKS = 4
MIN_SIZE = 3


def derivative(curves: np.ndarray, window: int = 5, polyorder: int = 2) -> np.ndarray:
    """Savitzky–Golay first derivative along the last axis (per cycle)."""
    window = min(window, curves.shape[-1] - (1 - curves.shape[-1] % 2))
    if window <= polyorder:
        return np.gradient(curves, axis=-1)
    from scipy.signal import savgol_filter  # scipy and ruptures load when used (--help stays fast)

    return savgol_filter(curves, window, polyorder, deriv=1, axis=-1, mode="interp")


def peak_time(curves: np.ndarray, *, sign: int = 1, first: float = 1.0) -> np.ndarray:
    """Sub-cycle time of the largest `sign` × derivative along the last axis: the argmax, moved
    by the vertex of the parabola through it and its two neighbours (at most half a cycle), so
    the time does not jump by whole cycles when two neighbours are nearly tied."""
    d = sign * derivative(np.asarray(curves, dtype=float))
    i = np.argmax(d, axis=-1)
    n = d.shape[-1]
    lo, hi = np.clip(i - 1, 0, n - 1), np.clip(i + 1, 0, n - 1)
    y0 = np.take_along_axis(d, lo[..., None], -1)[..., 0]
    y1 = np.take_along_axis(d, i[..., None], -1)[..., 0]
    y2 = np.take_along_axis(d, hi[..., None], -1)[..., 0]
    curv = y0 - 2 * y1 + y2
    inner = (i > 0) & (i < n - 1) & (curv < 0)
    offset = np.where(inner, 0.5 * (y0 - y2) / np.where(inner, curv, -1.0), 0.0)
    return first + i + np.clip(offset, -0.5, 0.5)


def bootstrap_rows(trials: int, n_boot: int, seed: int) -> np.ndarray:
    """`(1 + n_boot, trials)` trial indices: row 0 is every trial once, the others are resamples
    with replacement. One trial, or `n_boot=0`, gives row 0 alone."""
    rows = [np.arange(trials)]
    if trials > 1 and n_boot > 0:
        rows.append(np.random.default_rng(seed).integers(0, trials, (n_boot, trials)))
    return np.vstack(rows)


def row_means(data: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Trial means of `data (trials, …)` for each row of indices: `(rows, …)`; NaN (a trial
    without a valid candidate has no fitness) is left out of the mean, as pandas does."""
    weights = np.zeros((len(rows), data.shape[0]))
    np.add.at(weights, (np.arange(len(rows))[:, None], rows), 1.0)
    flat = data.reshape(data.shape[0], -1)
    ok = np.isfinite(flat)
    if ok.all():
        out = weights @ flat / rows.shape[1]
    else:
        count = weights @ ok
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(count > 0, weights @ np.where(ok, flat, 0.0) / count, np.nan)
    return out.reshape(len(rows), *data.shape[1:])


def standardize(per_trial: np.ndarray) -> np.ndarray:
    """Divide each series of `(trials, cycles, series)` by its pooled standard deviation."""
    sd = per_trial.reshape(-1, per_trial.shape[-1]).std(axis=0)
    return per_trial / np.where(sd > 0, sd, 1.0)


def fit_breaks(
    mean: np.ndarray, n_breaks: int, min_size: int = MIN_SIZE
) -> tuple[list[int], float]:
    """Exact best continuous piecewise-linear fit of `mean (cycles, series)` with `n_breaks`
    kinks: (kink indices, residual sum of squares)."""
    fits = _fits(mean, n_breaks, min_size)
    if n_breaks not in fits:
        raise ValueError(f"{n_breaks} breaks need {(n_breaks + 1) * min_size} cycles")
    return fits[n_breaks]


def _fits(mean: np.ndarray, max_breaks: int, min_size: int) -> dict[int, tuple[list[int], float]]:
    """{m: (kink indices, RSS)} for every feasible m ≤ max_breaks, from one cached DP."""
    mean = mean.reshape(len(mean), -1)
    n = len(mean)
    if n < 2:
        return {0: ([], 0.0)}
    import ruptures

    algo = ruptures.Dynp(model="clinear", min_size=min_size, jump=1).fit(mean)
    out = {0: ([], _hinge_rss(mean, []))}
    for m in range(1, max_breaks + 1):
        if (m + 1) * min_size > n:
            break
        kinks = [e - 1 for e in algo.predict(n_bkps=m)[:-1]]
        out[m] = (kinks, _hinge_rss(mean, kinks))
    return out


def _hinge_rss(mean: np.ndarray, kinks: list[int]) -> float:
    """RSS of the least-squares continuous piecewise-linear fit with kinks at these indices.

    The dynamic program places the kinks with ruptures' `clinear` cost, which joins segment
    end points by chords: fine to rank placements, but the chords pass through noisy end points,
    so on a single noisy run their RSS can exceed the total sum of squares (R² < 0). Refitting
    the same kinks by least squares (hinge basis 1, t, (t − t_k)₊) keeps R² in [0, 1]."""
    t = np.arange(len(mean), dtype=float)
    basis = np.column_stack([np.ones_like(t), t, *(np.maximum(t - k, 0.0) for k in kinks)])
    coef, *_ = np.linalg.lstsq(basis, mean, rcond=None)
    return float(((mean - basis @ coef) ** 2).sum())


def count_breaks(r2: np.ndarray, min_gain: float = MIN_GAIN) -> int:
    """The smallest m after which no further kinks add `min_gain` of R² each on average
    (R²ₘ' − R²ₘ < min_gain·(m' − m) for every feasible m' > m; NaN: not feasible).

    Looking ahead matters: a symmetric S-curve gains little from one kink (it cannot bend twice)
    and much from two, so stopping at the first small gain would call it phaseless."""
    r2 = np.asarray(r2, dtype=float)
    feasible = int(np.isfinite(r2).sum())
    for m in range(feasible):
        ahead = np.arange(m + 1, feasible)
        if (r2[ahead] - r2[m] < min_gain * (ahead - m)).all():
            return m
    return max(feasible - 1, 0)


@dataclass(frozen=True)
class RowFits:
    """Phase fits of each row: R² per kink count and the kink cycles of each count."""

    r2: np.ndarray  # (rows, max_breaks + 1), NaN where m kinks do not fit
    kinks: dict[int, np.ndarray]  # m -> (rows, m) cycles


_CACHE: dict[str, RowFits] = {}


def row_fits(
    means: np.ndarray, *, first: float = 1.0, max_breaks: int = MAX_BREAKS, min_size: int = MIN_SIZE
) -> RowFits:
    """Fit `means (rows, cycles, series)` (standardized) with 0…max_breaks kinks, row by row.

    Cached on the data: `detect` and `evaluate` fit the same rows once."""
    key = hashlib.sha1(
        means.tobytes() + repr((means.shape, first, max_breaks, min_size)).encode()
    ).hexdigest()
    if key in _CACHE:
        return _CACHE[key]
    rows = len(means)
    r2 = np.full((rows, max_breaks + 1), np.nan)
    kinks = {m: np.full((rows, m), np.nan) for m in range(max_breaks + 1)}
    for r, mean in enumerate(means):
        tss = float(((mean - mean.mean(axis=0)) ** 2).sum())
        for m, (idx, rss) in _fits(mean, max_breaks, min_size).items():
            r2[r, m] = 1 - rss / tss if tss > 0 else 1.0
            kinks[m][r] = [first + i for i in idx]
    _CACHE.clear()  # one entry: the last data fitted
    _CACHE[key] = RowFits(r2, kinks)
    return _CACHE[key]


def change_points(
    per_trial: np.ndarray,
    *,
    max_breaks: int = MAX_BREAKS,
    min_size: int = MIN_SIZE,
    n_breaks: int | None = None,
    min_gain: float = MIN_GAIN,
) -> list[float]:
    """Kink cycles of the trial mean of `per_trial (trials, cycles, series)`, each series
    standardized by its pooled SD; their count by `count_breaks` unless `n_breaks` is given."""
    data = np.asarray(per_trial, dtype=float)
    data = standardize(data if data.ndim == 3 else data[..., None])
    fits = row_fits(data.mean(axis=0)[None], max_breaks=max(max_breaks, n_breaks or 0),
                    min_size=min_size)  # fmt: skip
    m = count_breaks(fits.r2[0, : max_breaks + 1], min_gain) if n_breaks is None else n_breaks
    if m not in fits.kinks or np.isnan(fits.kinks[m][0]).any():
        return []
    return [float(x) for x in fits.kinks[m][0]]


@dataclass(frozen=True)
class Phases:
    """Detected boundaries (kink cycles) on the trial mean, with 90% bootstrap intervals over
    trials; the two-kink fit whatever the count; R² of the fits with 0, 1, … kinks."""

    boundaries: list[float]
    low: list[float]
    high: list[float]
    three_phase_fit: list[float]  # the best two-kink fit, whatever the count
    three_phase_low: list[float] = field(default_factory=list)
    three_phase_high: list[float] = field(default_factory=list)
    r2: list[float] = field(default_factory=list)
    min_gain: float = MIN_GAIN


def phases(
    per_trial: np.ndarray,
    *,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.9,
    first: float = 1.0,
    max_breaks: int = MAX_BREAKS,
    min_size: int = MIN_SIZE,
    min_gain: float = MIN_GAIN,
) -> Phases:
    """Detect phases on the trial-averaged `per_trial (trials, cycles, series)` curves.

    Each resample is fitted with the count found on the full sample (and with two kinks), so
    each interval belongs to one boundary."""
    data = standardize(np.asarray(per_trial, dtype=float))
    rows = bootstrap_rows(data.shape[0], n_boot, seed)
    fits = row_fits(row_means(data, rows), first=first, max_breaks=max_breaks, min_size=min_size)
    count = count_breaks(fits.r2[0], min_gain)
    tail = (1 - level) / 2 * 100

    def summary(m: int) -> tuple[list[float], list[float], list[float]]:
        k = fits.kinks.get(m)
        if k is None or np.isnan(k[0]).any():
            return [], [], []
        draws = k[1:] if len(k) > 1 else k
        lo, hi = np.percentile(draws, [tail, 100 - tail], axis=0)
        return [float(x) for x in k[0]], [float(x) for x in lo], [float(x) for x in hi]

    found, three = summary(count), summary(2)
    r2 = [float(x) for x in fits.r2[0] if np.isfinite(x)]
    return Phases(*found, three[0], three[1], three[2], r2, min_gain)
