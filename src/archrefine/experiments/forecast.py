"""`archrefine forecast`: fit the simulator to a run's first cycles and predict the rest.

The fit (forecast_fit.py) runs on cycles 1..N only while simulating the run's whole length, so
that a schedule that depends on the run's length (linear, cosine) is the run's own; the paper
model's is a MAP fit with a prior centred on the default parameters, since six cycles identify
some parameters and not others. Parameter sets are then drawn from the fit's posterior (the
learned generator: its least-squares confidence region) and each simulated afresh; the forecast
is the mean of their simulated means. The 80% band: the 10th–90th percentiles of what a run of
the observed number of trials may show under those sets (trials resampled), widened by a
split-conformal factor per column measured on development runs only (scripts/forecast_eval.py
--develop, kept in data/forecast_conformal.json), so the band holds the truth as often as it
says. docs/forecast.md says why, and how well it does on runs it was not developed on.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from importlib import resources

import numpy as np
import pandas as pd

from archrefine.experiments.calibrate import DEFAULT_BUDGET
from archrefine.experiments.fitting import simulate_candidates
from archrefine.experiments.forecast_fit import (
    GENERATORS,
    fit,
    fit_length,
    heldout_error,
    logit_start,
    posterior_draws,
    region,
    screen_starts,
    start_config,
)
from archrefine.experiments.forecast_io import METRICS, Forecast, ForecastError, Observed

#: observed columns a forecast predicts besides METRICS, and the metric each is mapped from
MAPPED = {"mean_accuracy": "fitness", "code_novelty": "novelty", "code_diversity": "diversity"}
LEVEL = 0.80  # the band's coverage
#: per generator: parameter sets forecast besides the fit, points sampled around the fit to
#: find them (learned only: the paper model's are posterior draws), simulated trials each
DRAW_BUDGET = {"paper": (20, 0, 50), "learned": (2, 4, 2)}
#: the split-conformal widening factors, per column (scripts/forecast_eval.py --develop),
#: measured at the default 6 fitted cycles; `conformal_path` names those of other lengths
DATA = resources.files("archrefine") / "data"
CONFORMAL = DATA / "forecast_conformal.json"
DEFAULT_FIT_CYCLES = 6


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
    conformal: Mapping[str, float] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> Forecast:
    """Fit `generators` to cycles 1..fit_cycles of `obs` and predict every cycle to its end.

    With more than one generator each is fitted to the fitted cycles but the last two observed
    ones and scored on those two (held-out error: RMS of residuals scaled by each column's
    spread over the fitted cycles); the best is refitted on all of them. The budget (defaults
    per generator): `trials` simulated per fitting evaluation, `draws` parameter sets behind
    the band (`DRAW_BUDGET`), `screen` Sobol starting points (forecast_fit.SCREEN),
    `max_nfev` optimizer iterations per start (forecast_fit.FIT_NFEV). `conformal`: the
    band's widening factor per column, and for `diversity_kept` (default: the paper model's,
    measured on development runs at the measured fit length nearest `fit_cycles`,
    experiments/forecast_conformal.py; `{}`: the raw band, as the development runs are
    forecast). The factors move the band only, never the forecast.
    """
    note = on_progress or (lambda _msg: None)
    fitted_obs = check_request(obs, fit_cycles)
    length = fit_length(obs.config, fit_cycles, obs.cycles)

    def fit_on(frame: pd.DataFrame, g: str):
        scales = _scales(obs, trials or DEFAULT_BUDGET[g][0], int(frame["cycle"].max()))
        base = start_config(obs.config, g)
        ranked = screen_starts(frame, base, g, length, seed, trials, screen, note, scales)
        solved = logit_start(frame, base) if g == "paper" else None
        # the defaults, base_logit solved from cycle 1, the best screened point
        starts = [base, *([solved] if solved else []), *(c for c in ranked[:1] if c is not base)]
        return (*fit(frame, starts, g, length, seed, trials, max_nfev, note, scales), scales)

    heldout: dict[str, float] = {}
    if len(generators) > 1:
        seen = fitted_obs["cycle"][fitted_obs.drop(columns="cycle").notna().any(axis=1)]
        hold = fitted_obs[fitted_obs["cycle"].isin(seen.iloc[-2:])]
        train = fitted_obs[fitted_obs["cycle"] < seen.iloc[-2]]
        for g in generators:
            heldout[g] = heldout_error(fit_on(train, g)[0], hold, fitted_obs)
        chosen = min(heldout, key=lambda g: heldout[g])
    else:
        chosen = generators[0]
    n_sets, n_region, k = DRAW_BUDGET[chosen]
    n_sets, k = (n_sets if draws is None else draws), (trials or k)
    cal, cov, scales = fit_on(fitted_obs, chosen)
    rng = np.random.default_rng(seed + 7919)
    if cov is not None:  # the paper model: draws from its posterior
        others, info = posterior_draws(cal, cov, n_sets, rng), {"posterior_draws": n_sets}
    else:
        found, tried, _ = region(fitted_obs, cal, chosen, scales, n_region, rng, note, LEVEL)
        others, info = found[:n_sets], {"sampled": tried, "inside": len(found)}
    param_sets = [cal.params, *others]
    columns = [*METRICS, *(c for c in MAPPED if c in obs.frame)]
    samples: list[np.ndarray] = []  # per parameter set: (resamples, cycles, columns)
    centers: list[np.ndarray] = []
    for b, params in enumerate(param_sets):
        note(f"forecast {b + 1}/{len(param_sets)}")
        over = {"trials": k, "seed": seed + 1000 + b, "loop.cycles": obs.cycles}
        config = cal.config.with_overrides(params | over)
        per_trial = _per_trial(simulate_candidates(config).metrics, cal.maps, columns)
        centers.append(_nanmean(per_trial, axis=0))
        samples.append(_resample_means(per_trial, obs.trials, 200, rng))
    pooled = np.concatenate(samples)  # (sets · 200, cycles, columns)
    measured_at = None
    if conformal is None:  # calibrated on the paper model's development runs only
        conformal, measured_at = load_conformal(fit_cycles) if chosen == "paper" else ({}, None)
    widen = {c: float(conformal.get(MAPPED.get(c, c), 1.0)) for c in columns}
    # the headline ratio has its own factor where one was measured (else diversity's)
    widen["diversity_kept"] = float(conformal.get("diversity_kept", conformal.get("diversity", 1)))
    # the forecast: the mean of the sets' simulated means (the posterior predictive mean; on
    # the development runs its final validity erred less than the fit's own simulation)
    point = _nanmean(np.stack(centers), axis=0)
    fc = _assemble(obs, cal, chosen, fit_cycles, heldout, columns, pooled, point, widen)
    fc.info |= {"simulated_trials": k, "parameter_draws": len(others), "conformal": widen}
    fc.info["conformal_fit_cycles"] = measured_at  # the development runs' fit length, if any
    fc.info["fit_final_validity"] = float(centers[0][-1, columns.index("validity")])
    fc.info["region"] = info
    fc.info["parameter_sets"] = [{p: float(v) for p, v in ps.items()} for ps in param_sets]
    return fc


def _scales(obs: Observed, sim_trials: int, upto: int) -> dict[str, float]:
    """Residual scales for a run of many trials: the standard error of observed − simulated
    mean (observed across-trial spread over cycles 1..`upto`, the fitted ones, and both sample
    sizes). Dividing by the observed spread of the means over the fitted cycles instead lets
    the flat early diversity and novelty, whose spread is mostly noise, outweigh validity; the
    spread of later cycles (validity's grows several-fold as it rises) would tell a hindcast
    about the cycles it predicts, and weigh the fitted ones too lightly against the prior."""
    if obs.noise is None:
        return {}
    sd = obs.noise[obs.noise.index <= upto].mean()
    factor = np.sqrt(1 / obs.trials + 1 / sim_trials)
    return {c: float(v) * factor for c, v in sd.items() if np.isfinite(v) and v > 0}


def conformal_path(fit_cycles: int):
    """Where the factors measured at `fit_cycles` fitted cycles are (or would be) kept."""
    if fit_cycles == DEFAULT_FIT_CYCLES:
        return CONFORMAL
    return DATA / f"forecast_conformal_fit{fit_cycles}.json"


def measured_fit_cycles() -> list[int]:
    """The fitted-cycle counts that development runs measured factors for."""
    found = [DEFAULT_FIT_CYCLES] if CONFORMAL.is_file() else []
    for item in DATA.iterdir():
        stem = item.name.removeprefix("forecast_conformal_fit").removesuffix(".json")
        if item.name.startswith("forecast_conformal_fit") and stem.isdigit():
            found.append(int(stem))
    return sorted(found)


def load_conformal(fit_cycles: int = DEFAULT_FIT_CYCLES) -> tuple[dict[str, float], int | None]:
    """The widening factors measured on development runs at the measured fit length nearest
    `fit_cycles` (a tie: the shorter), and that length; ({}, None) before any were measured."""
    measured = measured_fit_cycles()
    if not measured:
        return {}, None
    nearest = min(measured, key=lambda n: (abs(n - fit_cycles), n))
    raw = json.loads(conformal_path(nearest).read_text())["factor"]
    # null: too few development scores for the quantile, an unbounded factor (written as inf)
    return {c: float("inf") if q is None else float(q) for c, q in raw.items()}, nearest


def conformal_scores(point, lo, hi, observed) -> np.ndarray:
    """How far the truth lies from the forecast, in units of the raw band's extent on its side
    (≤ 1: inside the band). A side narrower than a quarter of the band counts as a quarter, so
    a forecast at the band's edge still has a width to scale."""
    point, lo, hi, observed = map(np.asarray, (point, lo, hi, observed))
    quarter = (hi - lo) / 4
    side = np.where(observed >= point, np.maximum(hi - point, quarter),
                    np.maximum(point - lo, quarter))  # fmt: skip
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(observed - point) / np.maximum(side, 1e-12)


def conformal_factor(scores: np.ndarray, level: float = LEVEL) -> float:
    """Split-conformal quantile: the ⌈(n + 1)·level⌉-th smallest of n scores, so a new case
    exchangeable with them falls within that many band-widths with probability ≥ level."""
    s = np.sort(np.asarray(scores, dtype=float)[np.isfinite(scores)])
    rank = math.ceil((len(s) + 1) * level)
    return float(s[rank - 1]) if 0 < rank <= len(s) else float("inf")


def widened(point, lo, hi, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """The band scaled about the forecast by `factor` (each side, as `conformal_scores` measures
    it), clipped to [0, 1] where every metric lives."""
    point, lo, hi = map(np.asarray, (point, lo, hi))
    quarter = (hi - lo) / 4
    down, up = np.maximum(point - lo, quarter), np.maximum(hi - point, quarter)
    return np.clip(point - factor * down, 0, 1), np.clip(point + factor * up, 0, 1)


#: the fewest observed cycles a forecast fits (so also the smallest --fit-cycles)
MIN_FIT_CYCLES = 3


def check_request(obs: Observed, fit_cycles: int) -> pd.DataFrame:
    """The observed rows the fit may use; one-line errors for impossible requests."""
    if fit_cycles < MIN_FIT_CYCLES:  # fewer could not hold the observed cycles asked for below
        raise ForecastError(
            f"--fit-cycles {fit_cycles}: need at least {MIN_FIT_CYCLES} cycles to fit"
        )
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
    if len(seen) < MIN_FIT_CYCLES:
        raise ForecastError(
            f"{obs.name}: {len(seen)} observed cycles among 1..{fit_cycles}; need at least "
            f"{MIN_FIT_CYCLES} (raise --fit-cycles)"
        )
    return frame.reset_index(drop=True)


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


def _assemble(obs, cal, chosen, fit_cycles, heldout, columns, pooled, point, widen):
    """The per-cycle table and the two headline numbers: the fit's forecast (`point`, cycles ×
    columns), the pooled draws' 10th–90th percentiles widened per column by `widen`."""
    lo_q, hi_q = (1 - LEVEL) / 2, (1 + LEVEL) / 2
    with warnings.catch_warnings():  # a cycle where no trial has a valid candidate: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        qs = np.nanquantile(pooled, [lo_q, hi_q], axis=0)
    cycles = np.arange(1, obs.cycles + 1)
    table = pd.DataFrame({"cycle": cycles, "fitted": cycles <= fit_cycles})
    for j, col in enumerate(columns):
        lo, hi = widened(point[:, j], qs[0, :, j], qs[1, :, j], widen[col])
        table[col], table[f"{col}_lo"], table[f"{col}_hi"] = point[:, j], lo, hi
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
    k_lo, k_hi = np.nanquantile(kept, lo_q), np.nanquantile(kept, hi_q)
    k_lo, k_hi = widened(kept_point, k_lo, k_hi, widen["diversity_kept"])
    summary = {
        "final_validity": float(point[-1, v]),
        "final_validity_lo": float(table[f"{columns[v]}_lo"].iloc[-1]),
        "final_validity_hi": float(table[f"{columns[v]}_hi"].iloc[-1]),
        "diversity_kept": float(kept_point),
        "diversity_kept_lo": float(k_lo),
        "diversity_kept_hi": float(k_hi),
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
        "interval": LEVEL,
        "first_cycle_diversity": "observed" if first_is_observed else "simulated",
    }
    return Forecast(table, chosen, fit_cycles, cal, heldout, summary, info)
