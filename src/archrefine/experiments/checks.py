"""The claim checks, vectorized over rows: row 0 is every trial, rows 1… are bootstrap resamples
of the trials (the same resamples in every condition). Each check returns what it measured on
row 0 and whether the claim holds on every row; `confidence` is the share of resamples in which
it holds. Definitions, tolerances and their reasons: docs/claims.md.
"""

from __future__ import annotations

import numpy as np

from archrefine.core.analysis import RowFits, count_breaks, peak_time

PAPER_BOUNDS = (7.5, 15.5)
BOUND_TOL = 2.0
PLATEAU = 1 / 3  # specialization's validity slope below this share of transition's
C2_LEVELS, C2_CHANGES, C2_FIXED = -0.7, -0.5, -0.3
C3_BAND = (0.07, 0.18)
C4_KEPT, C4_TOL, C4_SHARE = 0.94, 0.03, 0.99
C5_KEPT, C5_TOL = 0.82, 0.03
C6_RHO, C6_K = 0.8, 10
C7_WINDOW, C7_LAG = (6.0, 10.0), 1.0

Check = tuple[dict, np.ndarray]  # (measured on row 0, holds per row)


def num(x: float | np.floating, digits: int = 3) -> float | None:
    """A JSON number (None for NaN), rounded for the table."""
    x = float(x)
    return round(x, digits) if np.isfinite(x) else None


def interval(draws: np.ndarray, level: float = 0.9) -> list[float | None] | None:
    """Percentile interval of a resampled statistic (rows 1…); None without resamples."""
    if len(draws) < 2:
        return None
    draws = draws[1:]
    tail = (1 - level) / 2
    lo, hi = np.nanquantile(draws, [tail, 1 - tail]) if np.isfinite(draws).any() else (np.nan,) * 2
    return [num(lo), num(hi)]


def ranks(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Average ranks along `axis` (1-based; tied values share the mean of their ranks; a slice
    holding a NaN is all NaN): `scipy.stats.rankdata`'s numbers, which are exact half-integers,
    without importing scipy.stats (~60 MB) into a process that draws fig. 2."""
    x = np.moveaxis(np.asarray(x), axis, -1)
    n = x.shape[-1]
    order = np.argsort(x, axis=-1, kind="stable")
    y = np.take_along_axis(x, order, axis=-1)
    first = np.ones(y.shape, dtype=bool)  # where a run of equal values starts
    first[..., 1:] = y[..., :-1] != y[..., 1:]
    last = np.ones(y.shape, dtype=bool)
    last[..., :-1] = first[..., 1:]
    pos = np.arange(n)
    start = np.maximum.accumulate(np.where(first, pos, 0), axis=-1)
    end = np.minimum.accumulate(np.where(last, pos, n)[..., ::-1], axis=-1)[..., ::-1]
    out = np.empty(y.shape, dtype=float)
    np.put_along_axis(out, order, (start + end) / 2 + 1, axis=-1)
    if out.size and x.dtype.kind in "fc":
        out[np.isnan(x).any(axis=-1)] = np.nan
    return np.moveaxis(out, -1, axis)


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r along the last axis (NaN where either side is constant)."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def _slope(t: np.ndarray, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Least-squares slope of x on t per row, over the cycles where w is true."""
    n = w.sum(-1)
    tm = (w * t).sum(-1) / np.maximum(n, 1)
    xm = (w * x).sum(-1) / np.maximum(n, 1)
    den = (w * (t - tm[:, None]) ** 2).sum(-1)
    num_ = (w * (t - tm[:, None]) * (x - xm[:, None])).sum(-1)
    return np.where(den > 0, num_ / np.where(den > 0, den, 1.0), np.nan)


def _masked_mean(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (w * x).sum(-1) / np.maximum(w.sum(-1), 1)


def phase_check(raw: np.ndarray, fits: RowFits, *, first: float, min_gain: float) -> Check:
    """C1 on `raw (rows, cycles, 3)` trial means of validity, novelty, diversity and their
    standardized fits."""
    rows, cycles, _ = raw.shape
    t = first + np.arange(cycles, dtype=float)
    v, n, d = raw[..., 0], raw[..., 1], raw[..., 2]
    count = np.array([count_breaks(r, min_gain) for r in fits.r2])
    b = fits.kinks.get(2, np.full((rows, 2), np.nan))
    b1, b2 = b[:, :1], b[:, 1:]
    expl, trans, spec = t <= b1, (t >= b1) & (t <= b2), t >= b2
    rise = peak_time(v, first=first)
    shape = {
        "exploration_novelty_high": _masked_mean(n, expl) > n.mean(-1),
        "exploration_validity_low": _masked_mean(v, expl) < v.mean(-1),
        "transition_has_steepest_rise": (b[:, 0] <= rise) & (rise <= b[:, 1]),
        "specialization_validity_high": _masked_mean(v, spec) > v.mean(-1),
    }
    slope_t, slope_s = _slope(t, v, trans), _slope(t, v, spec)
    ratio = np.where(slope_t > 0, slope_s / np.where(slope_t > 0, slope_t, 1), np.inf)
    shape["specialization_plateau"] = ratio < PLATEAU
    d_slope, n_slope = _slope(t, d, spec), _slope(t, n, spec)
    shape["specialization_diversity_declining"] = d_slope < 0
    shape["specialization_novelty_declining"] = n_slope < 0
    near = (np.abs(b[:, 0] - PAPER_BOUNDS[0]) <= BOUND_TOL) & (
        np.abs(b[:, 1] - PAPER_BOUNDS[1]) <= BOUND_TOL
    )
    holds = (count == 2) & near & np.logical_and.reduce(list(shape.values()))
    # where the diversity drop happens: the share of cycle 1 → last lost after the second kink
    at_b2 = np.array(
        [np.interp(x, t, row) if np.isfinite(x) else np.nan for x, row in zip(b[:, 1], d)]
    )
    drop = d[:, 0] - d[:, -1]
    in_spec = np.where(drop != 0, (at_b2 - d[:, -1]) / np.where(drop != 0, drop, 1), np.nan)
    duration = (t[-1] - b[:, 1]) / (t[-1] - t[0]) if cycles > 1 else np.full(rows, np.nan)
    r2 = fits.r2[0]
    measured = {
        "count": int(count[0]),
        "r2": [num(x) for x in r2 if np.isfinite(x)],
        "r2_gain": [num(y - x) for x, y in zip(r2[:-1], r2[1:]) if np.isfinite(y)],
        "three_phase_fit": [num(x) for x in b[0]],
        "three_phase_ci90": [interval(b[:, i]) for i in range(2)],
        "shape": {k: bool(s[0]) for k, s in shape.items()},
        "validity_rise_cycle": num(rise[0]),
        "plateau_slope_ratio": num(ratio[0]),
        "diversity_drop_share_in_specialization": num(in_spec[0]),
        "specialization_duration_share": num(duration[0]),
        "collapsing": bool(in_spec[0] >= duration[0]),
    }
    return measured, holds


def inverse_check(vm: np.ndarray, nm: np.ndarray, v_rows: np.ndarray | None, n_rows) -> Check:
    """C2: levels and changes of the mean curves `(rows, cycles)`, and across trials at fixed
    cycles from the resampled per-trial arrays `(rows, trials, cycles)` (None: one trial)."""
    levels = pearson(vm, nm)
    changes = pearson(np.diff(vm, axis=-1), np.diff(nm, axis=-1))
    holds = (levels <= C2_LEVELS) & (changes <= C2_CHANGES)
    fixed = None
    if v_rows is not None:
        rho = pearson(
            np.moveaxis(ranks(v_rows, axis=1), 1, -1),
            np.moveaxis(ranks(n_rows, axis=1), 1, -1),
        )  # (rows, cycles): Spearman ρ across trials at each cycle
        with np.errstate(all="ignore"):
            fixed = np.array([np.nanmedian(r) if np.isfinite(r).any() else np.nan for r in rho])
        holds &= fixed <= C2_FIXED
    measured = {
        "levels_r": num(levels[0]),
        "changes_r": num(changes[0]),
        "fixed_cycle_rho": None if fixed is None else num(fixed[0]),
    }
    return measured, holds


def loss_check(div: dict[str, np.ndarray]) -> Check:
    """C3 on diversity means `(rows, cycles)` per schedule: constant's loss in the paper's band."""
    loss = {s: 1 - d[:, -1] / d[:, 0] for s, d in div.items()}
    c = loss["constant"]
    holds = (C3_BAND[0] <= c) & (c <= C3_BAND[1])
    return {f"{s}_loss": num(x[0]) for s, x in loss.items()}, holds


def cyclic_check(div: dict[str, np.ndarray], val: dict[str, np.ndarray], period: int) -> Check:
    """C4 over the last `period` cycles: cyclic kept and validity share, and cyclic keeping more
    diversity than every other schedule."""
    w = slice(-min(period, next(iter(div.values())).shape[-1]), None)
    with np.errstate(divide="ignore", invalid="ignore"):  # nothing kept or valid: no claim
        kept_c = {s: d[:, w] / d[:, :1] for s, d in div.items()}
        kept = {s: k.mean(-1) for s, k in kept_c.items()}
        vmean = {s: v[:, w].mean(-1) for s, v in val.items()}
        share = vmean["cyclic"] / np.max(np.stack(list(vmean.values())), axis=0)
        share_c = val["cyclic"][:, w] / np.max(np.stack([v[:, w] for v in val.values()]), axis=0)
    best = np.logical_and.reduce([kept["cyclic"] > k for s, k in kept.items() if s != "cyclic"])
    holds = (np.abs(kept["cyclic"] - C4_KEPT) <= C4_TOL) & (share >= C4_SHARE) & best
    measured = {
        "kept": num(kept["cyclic"][0]),
        "validity_share": num(share[0]),
        "cyclic_keeps_most": bool(best[0]),
        "kept_by_schedule": {s: num(k[0]) for s, k in kept.items()},
        "kept_by_end_cycle": [num(x) for x in kept_c["cyclic"][0]],
        "share_by_end_cycle": [num(x) for x in share_c[0]],
    }
    return measured, holds


def cosine_check(div: np.ndarray) -> Check:
    """C5: cosine's final ÷ first diversity."""
    with np.errstate(divide="ignore", invalid="ignore"):  # no diversity at cycle 1: no claim
        kept = div[:, -1] / div[:, 0]
    return {"kept": num(kept[0])}, np.abs(kept - C5_KEPT) <= C5_TOL


def balance(validity: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Harmonic mean of (final validity / best final validity) and (diversity kept), along the
    last axis (the k grid)."""
    with np.errstate(divide="ignore", invalid="ignore"):  # nothing valid, nothing kept: NaN
        v = validity / validity.max(axis=-1, keepdims=True)
        return 2 * v * kept / (v + kept)


def selection_check(ks: np.ndarray, v: np.ndarray, f: np.ndarray, d: np.ndarray) -> Check:
    """C6 on final validity, fitness `(rows, k)` and diversity `(rows, k, cycles)`."""
    rk = ranks(ks)
    rho = {key: pearson(np.broadcast_to(rk, x.shape), ranks(x, axis=-1)) for key, x in
           (("validity", v), ("fitness", f), ("diversity", d[..., -1]))}  # fmt: skip
    trends = (
        (rho["validity"] <= -C6_RHO) & (rho["fitness"] <= -C6_RHO) & (rho["diversity"] >= C6_RHO)
    )
    score = balance(v, d[..., -1] / d[..., 0])
    best = ks[np.argmax(score, axis=-1)]
    draws = best[1:] if len(best) > 1 else best
    lo, hi = (int(x) for x in np.quantile(draws, [0.05, 0.95], method="inverted_cdf"))
    measured = {
        **{f"rho_{k}": num(r[0]) for k, r in rho.items()},
        "best_k": int(best[0]),
        "best_k_ci90": [lo, hi],
        "best_k_share": {int(k): num((draws == k).mean()) for k in np.unique(draws)},
        "balance": {int(k): num(s) for k, s in zip(ks, score[0])},
    }
    holds = trends & (best == C6_K)  # per resample: 10 wins outright
    holds[0] = trends[0] and lo <= C6_K <= hi  # the verdict: 10 inside the interval
    return measured, holds


def timing_check(vm: np.ndarray, nm: np.ndarray, *, first: float) -> Check:
    """C7: sub-cycle times of the steepest validity rise and novelty fall, and their lag. A
    steepest change at the first or last cycle is not located (it may lie outside the run)."""
    rise, fall = peak_time(vm, first=first), peak_time(nm, sign=-1, first=first)
    lag = fall - rise
    lo, hi = C7_WINDOW
    last = first + vm.shape[-1] - 1
    inner = (rise > first) & (rise < last) & (fall > first) & (fall < last)
    holds = (lo <= rise) & (rise <= hi) & (lo <= fall) & (fall <= hi) & (np.abs(lag) <= C7_LAG)
    holds &= inner
    measured = {
        "validity_rise": num(rise[0], 2),
        "novelty_fall": num(fall[0], 2),
        "lag": num(lag[0], 2),
        "lag_ci90": interval(lag),
        "validity_rise_ci90": interval(rise),
        "novelty_fall_ci90": interval(fall),
    }
    return measured, holds
