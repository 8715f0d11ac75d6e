"""`archrefine forecast`: fit the simulator to a run's first cycles and predict the rest.

The fit is `calibrate`'s (its free parameters, loss and optimizer), run on cycles 1..N only while
simulating the run's whole length, so that a schedule that depends on the run's length (linear,
cosine) is the run's own; it starts from the best of a Sobol screen of the parameter box, never
from the run's own values. The 80% band has two sources. Parameter uncertainty: parameter sets
inside the fit's 80% confidence region (Beale's loss bound), sampled along its linearized
covariance, plus other optima from the next-best starts (early cycles pin the late ones down
poorly, and calibrate's linearized bootstrap at one seed saw a fraction of that spread).
Sampling noise: for each parameter set, the observed run's number of trials resampled from
its simulated trials and averaged. docs/forecast.md says why, and how well it does.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import f as f_dist
from scipy.stats import qmc

from archrefine.core.config import Config
from archrefine.core.schedules import rates
from archrefine.experiments.calibrate import (
    DEFAULT_BUDGET,
    LEARNED_PARAMS,
    LOG_SCALE,
    PAPER_PARAMS,
    Calibration,
    _from_unit,
    _get,
    _observe,
    _residual_table,
    _simulate,
    _spread,
    _to_unit,
    calibrate,
)
from archrefine.experiments.forecast_io import METRICS, Forecast, ForecastError, Observed

#: observed columns a forecast predicts besides METRICS, and how each follows from a trial
MAPPED = ("mean_accuracy", "code_novelty", "code_diversity")
LEVEL = 0.80  # the band's coverage
GENERATORS = ("paper", "learned")
#: the fitted parameters: calibrate's, with bonus_max's bound raised to hold the default (8.0)
FREE = {
    "paper": PAPER_PARAMS | {"generator.bonus_max": (0.0, 10.0)},
    "learned": dict(LEARNED_PARAMS),
}
#: per generator: parameter sets forecast besides the fit, points sampled around the fit to
#: find them, simulated trials per evaluation and per forecast
DRAW_BUDGET = {"paper": (10, 32, 30), "learned": (2, 4, 2)}
#: samples around the fit: multiples of its linearized covariance's square root (cycled),
#: and the finite-difference step of that linearization (in each parameter's [0, 1] range)
STRETCH = (1.0, 2.0, 4.0)
STEP = 0.02
#: fits from the next-best screened starts, kept when inside the confidence region
ALTERNATIVES = {"paper": 2, "learned": 0}
#: optimizer iterations per start of the main fit (learned: each costs minutes of CPU)
FIT_NFEV = {"paper": DEFAULT_BUDGET["paper"][1], "learned": 2}
#: scrambled-Sobol starting points screened before the fit (a power of two)
SCREEN = {"paper": 16, "learned": 0}


def generators_for(obs: Observed, choice: str) -> list[str]:
    """`auto`: the paper model, and the learned generator too where it writes the run's space."""
    if choice == "auto":
        direct = any(c in obs.frame for c in ("novelty", "diversity", "fitness"))
        learned_ok = obs.config.space.kind == "grounded" or not direct
        return ["paper", "learned"] if learned_ok else ["paper"]
    names = [g.strip() for g in choice.split(",") if g.strip()]
    if not names or any(g not in GENERATORS for g in names):
        raise ForecastError(f"--generator: {choice!r}: use auto or a list of paper, learned")
    if "learned" in names and obs.config.space.kind != "grounded" and "diversity" in obs.frame:
        raise ForecastError(
            "--generator learned: the learned generator writes only the grounded space, and this "
            f"run's novelty and diversity are measured in the {obs.config.space.kind} space"
        )
    return list(dict.fromkeys(names))


def forecast(
    obs: Observed,
    *,
    fit_cycles: int = 6,
    generators: Sequence[str] = ("paper",),
    seed: int = 0,
    trials: int | None = None,
    draws: int | None = None,
    screen: int | None = None,
    max_nfev: int | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> Forecast:
    """Fit `generators` to cycles 1..fit_cycles of `obs` and predict every cycle to its end.

    With more than one generator each is fitted to the fitted cycles but the last two observed
    ones and scored on those two (held-out error: RMS of residuals scaled by each column's
    spread over the fitted cycles); the best is refitted on all of them. The budget (defaults
    per generator): `trials` simulated per evaluation and per forecast simulation, `draws`
    parameter sets from the confidence region (`DRAW_BUDGET`), `screen` Sobol starting points
    (`SCREEN`), `max_nfev` optimizer iterations per start (`FIT_NFEV`).
    """
    note = on_progress or (lambda _msg: None)
    fitted_obs = check_request(obs, fit_cycles)
    length = _fit_length(obs.config, fit_cycles, obs.cycles)
    scales = {g: _scales(obs, trials or DEFAULT_BUDGET[g][0]) for g in GENERATORS}
    heldout: dict[str, float] = {}
    if len(generators) > 1:
        seen = fitted_obs["cycle"][fitted_obs.drop(columns="cycle").notna().any(axis=1)]
        hold = fitted_obs[fitted_obs["cycle"].isin(seen.iloc[-2:])]
        train = fitted_obs[fitted_obs["cycle"] < seen.iloc[-2]]
        for g in generators:
            base = _start(obs.config, g)
            start = _screen(train, base, g, length, seed, trials, screen, note, scales[g])
            cal = _fit(train, start[0], g, length, seed, trials, max_nfev, note, scales[g])
            heldout[g] = _heldout_error(cal, hold, fitted_obs)
        chosen = min(heldout, key=lambda g: heldout[g])
    else:
        chosen = generators[0]
    refits, n_region, k = DRAW_BUDGET[chosen]
    refits, k = (refits if draws is None else draws), (trials or k)
    base = _start(obs.config, chosen)
    scale = scales[chosen]
    starts = _screen(fitted_obs, base, chosen, length, seed, trials, screen, note, scale)
    cal = _fit(fitted_obs, starts[0], chosen, length, seed, trials, max_nfev, note, scale)
    rng = np.random.default_rng(seed + 7919)
    region, tried, bound = _region(fitted_obs, cal, chosen, scale, n_region, rng, note)
    others = []  # other optima: fits from the next-best screened starts, as good as the best
    for j in range(1, min(ALTERNATIVES[chosen] + 1, len(starts))):
        other = _fit(fitted_obs, starts[j], chosen, length, seed, trials, max_nfev, note, scale)
        if _loss(fitted_obs, other.config, scale) <= bound:
            others.append(other.params)
    param_sets = [cal.params, *others, *region[:refits]]
    columns = [*METRICS, *(c for c in MAPPED if c in obs.frame)]
    samples: list[np.ndarray] = []  # per parameter set: (resamples, cycles, columns)
    centers: list[np.ndarray] = []
    for b, params in enumerate(param_sets):
        note(f"forecast {b + 1}/{len(param_sets)}")
        over = {"trials": k, "seed": seed + 1000 + b, "loop.cycles": obs.cycles}
        config = cal.config.with_overrides(params | over)
        per_trial = _per_trial(_simulate(config).metrics, cal.maps, columns)
        centers.append(_nanmean(per_trial, axis=0))
        samples.append(_resample_means(per_trial, obs.trials, 200, rng))
    pooled = np.concatenate(samples)  # (sets · 200, cycles, columns)
    n_sets = len(param_sets) - 1
    fc = _assemble(obs, cal, chosen, fit_cycles, heldout, columns, pooled, centers, n_sets, k)
    fc.info["region"] = {"sampled": tried, "inside": len(region), "other_optima": len(others)}
    fc.info["parameter_sets"] = [{p: float(v) for p, v in ps.items()} for ps in param_sets]
    return fc


def _scales(obs: Observed, sim_trials: int) -> dict[str, float]:
    """Residual scales for a run of many trials: the standard error of observed − simulated
    mean (observed across-trial spread, both sample sizes). Dividing by the observed spread
    over the fitted cycles instead lets the flat early diversity and novelty, whose spread is
    mostly noise, outweigh validity."""
    return {c: sd * np.sqrt(1 / obs.trials + 1 / sim_trials) for c, sd in obs.noise.items()}


def _start(config: Config, generator: str) -> Config:
    """The run's config with the fitted parameters at their defaults: the fit never starts from
    the values that produced the run (a simulated run's config holds them)."""
    default = Config()
    over = {k: _get(default, k) for k in FREE[generator]}
    if generator == "learned":  # the only space it writes
        over["space.kind"] = "grounded"
    return config.with_overrides(over)


def _fit_length(config: Config, fit_cycles: int, horizon: int) -> int:
    """Cycles each fitting simulation runs: only the fitted ones when the schedule's first
    rates do not depend on the run's length (constant, cyclic), else the whole run."""
    same = np.allclose(
        rates(config.schedule, horizon)[:fit_cycles], rates(config.schedule, fit_cycles)
    )
    return fit_cycles if same else horizon


def _screen(frame, base, generator, cycles, seed, trials, n, note, scales) -> list[Config]:
    """Starting points: the defaults and `SCREEN[generator]` scrambled-Sobol points of the free
    parameters, best loss on the fitted cycles first (the loss surface has long flat valleys;
    one start from the defaults often stops far from the data)."""
    bounds = FREE[generator]
    keys = list(bounds)
    lo, hi = np.array([b[0] for b in bounds.values()]), np.array([b[1] for b in bounds.values()])
    log = np.array([k in LOG_SCALE for k in keys])
    points = [base]
    n = SCREEN[generator] if n is None else n
    if n:
        unit = qmc.Sobol(len(keys), seed=seed).random(n)
        values = _from_unit(unit, lo, hi, log)
        points += [base.with_overrides(dict(zip(keys, map(float, v)))) for v in values]
    over = {"generator.kind": generator, "trials": trials or DEFAULT_BUDGET[generator][0]}
    over |= {"seed": seed, "loop.cycles": cycles}
    losses = []
    for i, point in enumerate(points):
        note(f"screening {generator}: {i + 1}/{len(points)}")
        losses.append(_loss(frame, point.with_overrides(over), scales))
    return [points[i] for i in np.argsort(losses, kind="stable")]


def _loss(frame: pd.DataFrame, config: Config, scales: dict[str, float]) -> float:
    """calibrate's objective at one point: squared residuals over each column's scale."""
    r = _residuals(frame, config, scales)
    return float(r @ r)


def _residuals(frame: pd.DataFrame, config: Config, scales: dict[str, float]) -> np.ndarray:
    """calibrate's scaled residuals at one point (a cycle with nothing valid: a unit miss)."""
    obs = frame[frame.drop(columns="cycle").notna().any(axis=1)]
    mapped, _ = _observe(_simulate(config), obs)
    table = _residual_table(obs, mapped)
    scale = {c: scales.get(c) or _spread(obs[c]) for c in mapped}
    r = table["residual"].to_numpy() / table["column"].map(scale).to_numpy()
    return np.nan_to_num(r, nan=1.0)


def _region(frame, cal: Calibration, generator, scales, n, rng, note):
    """Parameter sets inside the 80% confidence region of nonlinear least squares (Beale's
    bound: loss ≤ best · (1 + p/(m − p) · F(p, m − p)), m residuals, p parameters), found by
    sampling the fit's linearized (Gauss–Newton) covariance at `STRETCH` times its size, so
    the samples run along the poorly determined directions; every loss at the fit's simulation
    seed, so they compare. Returns the sets (random order) and how many were tried."""
    bounds = FREE[generator]
    keys = list(bounds)
    lo, hi = np.array([b[0] for b in bounds.values()]), np.array([b[1] for b in bounds.values()])
    log = np.array([k in LOG_SCALE for k in keys])
    u0 = _to_unit(np.array([cal.params[k] for k in keys]), lo, hi, log)

    def residuals(u: np.ndarray) -> np.ndarray:
        params = {k: float(v) for k, v in zip(keys, _from_unit(u, lo, hi, log))}
        return _residuals(frame, cal.config.with_overrides(params), scales)

    r0 = residuals(u0)
    best, (m, p) = float(r0 @ r0), (len(r0), len(keys))
    jac = np.empty((m, p))
    for i in range(p):  # forward differences, stepping into the box
        note(f"sampling around the fit: derivative {i + 1}/{p}")
        h = STEP if u0[i] + STEP <= 1 else -STEP
        jac[:, i] = (residuals(u0 + h * np.eye(p)[i]) - r0) / h
    cov = np.linalg.pinv(jac.T @ jac, rcond=1e-8) * best / max(m - p, 1)
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    root = v * np.sqrt(np.clip(w, 0, None))
    bound = best * (1 + p / (m - p) * f_dist.ppf(LEVEL, p, m - p)) if m > p else 2 * best
    inside = []
    for i in range(n):
        note(f"sampling around the fit: {i + 1}/{n}")
        u = np.clip(u0 + STRETCH[i % len(STRETCH)] * root @ rng.standard_normal(p), 0, 1)
        r = residuals(u)
        if float(r @ r) <= bound:
            inside.append({k: float(x) for k, x in zip(keys, _from_unit(u, lo, hi, log))})
    order = rng.permutation(len(inside))
    return [inside[i] for i in order], n, bound


def check_request(obs: Observed, fit_cycles: int) -> pd.DataFrame:
    """The observed rows the fit may use; one-line errors for impossible requests."""
    if fit_cycles < 2:
        raise ForecastError(f"--fit-cycles {fit_cycles}: need at least 2 cycles to fit")
    if fit_cycles >= obs.cycles:
        raise ForecastError(
            f"--fit-cycles {fit_cycles}: the run has {obs.cycles} cycles, so nothing is left to "
            "forecast (fit fewer cycles, or pass --cycles to forecast further)"
        )
    frame = obs.frame[obs.frame["cycle"] <= fit_cycles]
    seen = frame[frame.drop(columns="cycle").notna().any(axis=1)]
    last = int(obs.frame["cycle"].max())
    if obs.source != "csv" and last < fit_cycles:
        raise ForecastError(
            f"{obs.name}: only {last} cycles recorded, fewer than --fit-cycles {fit_cycles}"
        )
    if len(seen) < 3:
        raise ForecastError(
            f"{obs.name}: {len(seen)} observed cycles among 1..{fit_cycles}; need at least 3 "
            "(raise --fit-cycles)"
        )
    return frame.reset_index(drop=True)


def _fit(frame, base, generator, cycles, seed, trials, max_nfev, note, scales) -> Calibration:
    return calibrate(
        frame,
        generator=generator,
        params=FREE[generator],
        base=base,
        trials=trials or DEFAULT_BUDGET[generator][0],
        seed=seed,
        n_boot=0,
        max_nfev=max_nfev or FIT_NFEV[generator],
        cycles=cycles,
        on_evaluation=lambda n: note(f"fitting {generator}: simulation {n}"),
        scales=scales,
    )


def _heldout_error(cal: Calibration, hold: pd.DataFrame, scale_from: pd.DataFrame) -> float:
    """RMS over the held-out cells of (observed − fitted) / the column's observed spread."""
    errs = []
    fitted = cal.fitted.set_index("cycle")
    for col in hold.columns.drop("cycle"):
        if col not in fitted:
            continue
        for cycle, value in zip(hold["cycle"], hold[col]):
            if pd.notna(value):
                err = (value - fitted.at[cycle, col]) / _spread(scale_from[col])
                errs.append(float(err) if np.isfinite(err) else 1.0)
    return float(np.sqrt(np.mean(np.square(errs)))) if errs else float("inf")


def _per_trial(metrics: pd.DataFrame, maps: dict[str, float], columns: list[str]) -> np.ndarray:
    """(trials, cycles, columns) per-trial values, observed units for the mapped columns."""
    wide = {m: metrics.pivot(index="trial", columns="cycle", values=m) for m in METRICS}
    out = []
    for col in columns:
        if col in wide:
            out.append(wide[col].to_numpy(dtype=float))
        elif col == "mean_accuracy":
            a, b = maps.get("accuracy_intercept", 0.0), maps.get("accuracy_slope", 0.0)
            out.append(a + b * wide["fitness"].to_numpy(dtype=float))
        else:  # code_novelty, code_diversity: c · the simulated metric
            metric = col.removeprefix("code_")
            out.append(maps.get(f"{col}_scale", 1.0) * wide[metric].to_numpy(dtype=float))
    return np.stack(out, axis=2)


def _resample_means(per_trial: np.ndarray, n: int, reps: int, rng) -> np.ndarray:
    """`reps` means of `n` trials drawn with replacement: what a run of `n` trials may show."""
    idx = rng.integers(0, per_trial.shape[0], size=(reps, n))
    with np.errstate(invalid="ignore"):
        return _nanmean(per_trial[idx], axis=1) if n > 1 else per_trial[idx[:, 0]]


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    """nanmean, NaN (without a warning) where a slice has no finite value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def _assemble(obs, cal, chosen, fit_cycles, heldout, columns, pooled, centers, n_draws, k):
    """The per-cycle table and the two headline numbers, with their bands."""
    lo_q, hi_q = (1 - LEVEL) / 2, (1 + LEVEL) / 2
    point = _nanmean(np.stack(centers), axis=0)  # (cycles, columns): the draws' mean
    with warnings.catch_warnings():  # a cycle where no trial has a valid candidate: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        qs = np.nanquantile(pooled, [lo_q, hi_q], axis=0)
    cycles = np.arange(1, obs.cycles + 1)
    table = pd.DataFrame({"cycle": cycles, "fitted": cycles <= fit_cycles})
    for j, col in enumerate(columns):
        table[col], table[f"{col}_lo"], table[f"{col}_hi"] = point[:, j], qs[0, :, j], qs[1, :, j]
    observed = obs.frame.set_index("cycle")
    for col in observed.columns:
        table[f"observed_{col}"] = table["cycle"].map(observed[col])
    v = columns.index("validity")
    div = "diversity" if "diversity" in obs.frame else "code_diversity"
    d = columns.index(div if div in columns else "diversity")
    first = observed[div].get(1, np.nan) if div in observed else np.nan
    first_is_observed = bool(np.isfinite(first))
    with np.errstate(invalid="ignore", divide="ignore"):
        kept = pooled[:, -1, d] / (first if first_is_observed else pooled[:, 0, d])
        kept_point = point[-1, d] / (first if first_is_observed else point[0, d])
    summary = {
        "final_validity": float(point[-1, v]),
        "final_validity_lo": float(qs[0, -1, v]),
        "final_validity_hi": float(qs[1, -1, v]),
        "diversity_kept": float(kept_point),
        "diversity_kept_lo": float(np.nanquantile(kept, lo_q)),
        "diversity_kept_hi": float(np.nanquantile(kept, hi_q)),
    }
    last = observed.index.max()
    if last == obs.cycles and "validity" in observed and first_is_observed:  # a hindcast
        summary["observed_final_validity"] = float(observed.at[last, "validity"])
        summary["observed_diversity_kept"] = float(observed.at[last, div] / first)
    info = {
        "source": obs.source,
        "input": obs.name,
        "observed_trials": obs.trials,
        "horizon": obs.cycles,
        "simulated_trials": k,
        "parameter_draws": n_draws,
        "interval": LEVEL,
        "first_cycle_diversity": "observed" if first_is_observed else "simulated",
    }
    return Forecast(table, chosen, fit_cycles, cal, heldout, summary, info)
