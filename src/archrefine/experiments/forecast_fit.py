"""The fits behind `archrefine forecast`: the paper model by maximum a posteriori, the learned
generator by `calibrate`, and the parameter sets behind the band.

Six cycles hold validity at a few percent under the paper model, so they barely say how fast the
learned bonus will grow (`bonus_max`, `bonus_rate`); a least-squares fit wandered along that flat
valley and forecast final validities tens of points apart from equally good fits. The paper
model's fit is therefore a MAP fit: a normal prior centred on the default parameters (calibrated
to the paper's runs, docs/model.md) with `PRIOR_SD` of each parameter's range, added to the
residuals as pseudo-observations, so the fitted cycles move only what they can identify. The
parameter sets behind the band are draws from the Laplace (Gauss–Newton) approximation of that
posterior. The learned generator (minutes per evaluation) keeps calibrate's fit and the loss
region of nonlinear least squares. docs/forecast.md says why, and how well it does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.optimize import least_squares
from scipy.stats import f as f_dist
from scipy.stats import qmc

from archrefine.core.config import Config
from archrefine.core.schedules import rates
from archrefine.experiments.calibrate import (
    DEFAULT_BUDGET,
    DIFF_STEP,
    LEARNED_PARAMS,
    LOG_SCALE,
    PAPER_PARAMS,
    Calibration,
    calibrate,
)
from archrefine.experiments.fitting import (
    config_value,
    fitted_frame,
    from_unit,
    observe,
    residual_table,
    rmse_by_column,
    simulate_candidates,
    spread,
    to_unit,
)

GENERATORS = ("paper", "learned")
#: the fitted parameters: calibrate's, with bonus_max's bound raised to hold the default (8.0)
FREE = {
    "paper": PAPER_PARAMS | {"generator.bonus_max": (0.0, 10.0)},
    "learned": dict(LEARNED_PARAMS),
}
#: searched (and given its prior) on a log scale: calibrate's, and the bonus's rate, whose
#: default (0.034) sits near the bottom of its range
LOG = LOG_SCALE | {"generator.bonus_rate"}
#: the paper model's prior: the defaults, this standard deviation in each parameter's [0, 1]
#: range (wide: ±1.4 for base_logit, ±2 for bonus_max, ×/÷ 2.2 for bonus_rate, ±0.4 for
#: familiarity, ±0.19 for prior_rate)
PRIOR_SD = 0.2
#: the learned generator's band: samples around the fit, and the finite-difference step of the
#: linearization they are drawn from (each parameter's [0, 1] range)
STRETCH = (1.0, 2.0, 4.0)
STEP = 0.02
#: optimizer iterations per start of the main fit (learned: each costs minutes of CPU)
FIT_NFEV = {"paper": DEFAULT_BUDGET["paper"][1], "learned": 2}
#: scrambled-Sobol starting points screened before the fit (a power of two)
SCREEN = {"paper": 16, "learned": 0}

Note = Callable[[str], None]


def box(generator: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The free parameters' keys, bounds and log-scale flags."""
    bounds = FREE[generator]
    lo, hi = np.array([b[0] for b in bounds.values()]), np.array([b[1] for b in bounds.values()])
    return list(bounds), lo, hi, np.array([k in LOG for k in bounds])


def prior_centre(generator: str) -> np.ndarray:
    """The default parameters in optimizer coordinates: the prior's centre."""
    keys, lo, hi, log = box(generator)
    return to_unit(np.array([float(config_value(Config(), k)) for k in keys]), lo, hi, log)


def start_config(config: Config, generator: str) -> Config:
    """The run's config with the fitted parameters at their defaults: the fit never starts from
    the values that produced the run (a simulated run's config holds them)."""
    default = Config()
    over = {k: config_value(default, k) for k in FREE[generator]}
    if generator == "learned":  # the only space it writes
        over["space.kind"] = "grounded"
    return config.with_overrides(over)


def fit_length(config: Config, fit_cycles: int, horizon: int) -> int:
    """Cycles each fitting simulation runs: only the fitted ones when the schedule's first
    rates do not depend on the run's length (constant, cyclic), else the whole run."""
    same = np.allclose(
        rates(config.schedule, horizon)[:fit_cycles], rates(config.schedule, fit_cycles)
    )
    return fit_cycles if same else horizon


def logit_start(frame: pd.DataFrame, base: Config) -> Config | None:
    """`base` with base_logit solved from the observed cycle-1 validity (every candidate of
    cycle 1 is written fresh from the uniform prior, so validity = ceiling · σ(base_logit)^d),
    as calibrate's second start; None where cycle 1's validity is not observed or the space's
    format makes cycle 1 non-uniform."""
    v = (
        frame.loc[frame["cycle"] == 1, "validity"]
        if "validity" in frame
        else pd.Series(dtype=float)
    )
    ceiling = base.generator.ceiling
    if base.space.kind != "abstract" or v.dropna().empty or not 0 < float(v.iloc[0]) < ceiling:
        return None
    p = (float(v.iloc[0]) / ceiling) ** (1 / base.space.length)
    lo, hi = FREE["paper"]["generator.base_logit"]
    return base.with_overrides(
        {"generator.base_logit": float(np.clip(np.log(p / (1 - p)), lo, hi))}
    )


def _penalty(generator: str, u: np.ndarray) -> np.ndarray:
    """The prior's pseudo-residuals (none for the learned generator)."""
    if generator != "paper":
        return np.empty(0)
    return (u - prior_centre(generator)) / PRIOR_SD


def _unit_of(config: Config, generator: str) -> np.ndarray:
    keys, lo, hi, log = box(generator)
    return to_unit(np.array([float(config_value(config, k)) for k in keys]), lo, hi, log)


def screen_starts(
    frame, base, generator, cycles, seed, trials, n, note: Note, scales
) -> list[Config]:
    """Starting points: the defaults and `SCREEN[generator]` scrambled-Sobol points of the free
    parameters, best (penalized) loss on the fitted cycles first (the loss surface has long
    flat valleys; one start from the defaults can stop far from the data)."""
    keys, lo, hi, log = box(generator)
    points = [base]
    n = SCREEN[generator] if n is None else n
    if n:
        values = from_unit(qmc.Sobol(len(keys), seed=seed).random(n), lo, hi, log)
        points += [base.with_overrides(dict(zip(keys, map(float, v)))) for v in values]
    over = {"generator.kind": generator, "trials": trials or DEFAULT_BUDGET[generator][0]}
    over |= {"seed": seed, "loop.cycles": cycles}
    losses = []
    for i, point in enumerate(points):
        note(f"screening {generator}: {i + 1}/{len(points)}")
        prior = _penalty(generator, _unit_of(point, generator))
        losses.append(loss(frame, point.with_overrides(over), scales) + float(prior @ prior))
    return [points[i] for i in np.argsort(losses, kind="stable")]


def loss(frame: pd.DataFrame, config: Config, scales: dict[str, float]) -> float:
    """calibrate's objective at one point: squared residuals over each column's scale."""
    r = residuals(frame, config, scales)
    return float(r @ r)


def residuals(frame: pd.DataFrame, config: Config, scales: dict[str, float]) -> np.ndarray:
    """calibrate's scaled residuals at one point (a cycle with nothing valid: a unit miss)."""
    obs = frame[frame.drop(columns="cycle").notna().any(axis=1)]
    mapped, _ = observe(simulate_candidates(config), obs)
    table = residual_table(obs, mapped)
    scale = {c: scales.get(c) or spread(obs[c]) for c in mapped}
    r = table["residual"].to_numpy() / table["column"].map(scale).to_numpy()
    return np.nan_to_num(r, nan=1.0)


def fit(frame, starts, generator, cycles, seed, trials, max_nfev, note: Note, scales):
    """The fit on `frame`'s cycles from `starts` (the paper model: each; the learned generator:
    the first, plus calibrate's own second start): (Calibration, the posterior covariance in
    optimizer coordinates, or None for the learned generator)."""
    trials = trials or DEFAULT_BUDGET[generator][0]
    max_nfev = max_nfev or FIT_NFEV[generator]
    if generator == "paper":
        return map_fit(frame, starts, cycles, seed, trials, max_nfev, note, scales)
    cal = calibrate(
        frame,
        generator=generator,
        params=FREE[generator],
        base=starts[0],
        trials=trials,
        seed=seed,
        n_boot=0,
        max_nfev=max_nfev,
        cycles=cycles,
        on_evaluation=lambda n: note(f"fitting {generator}: simulation {n}"),
        scales=scales,
    )
    return cal, None


def map_fit(frame, starts, cycles, seed, trials, max_nfev, note: Note, scales):
    """The paper model's MAP fit from each of `starts` (the best kept), and the Laplace
    covariance of its posterior: (JᵀJ)⁻¹ over data and prior rows, inflated by the data's
    loss per residual where the model fits worse than the observation noise."""
    keys, lo, hi, log = box("paper")
    over = {"generator.kind": "paper", "trials": trials, "seed": seed, "loop.cycles": cycles}
    base = starts[0].with_overrides(over)
    count = [0]

    def at(u: np.ndarray) -> Config:
        return base.with_overrides({k: float(v) for k, v in zip(keys, from_unit(u, lo, hi, log))})

    def augmented(u: np.ndarray) -> np.ndarray:
        count[0] += 1
        note(f"fitting paper: simulation {count[0]}")
        return np.concatenate([residuals(frame, at(u), scales), _penalty("paper", u)])

    runs = [
        least_squares(
            augmented,
            _unit_of(s, "paper"),
            bounds=(0, 1),
            diff_step=DIFF_STEP,
            max_nfev=max_nfev,
            x_scale=1.0,
        )  # fmt: skip
        for s in starts
    ]
    best = min(runs, key=lambda r: r.cost)
    u, p = best.x, len(keys)
    data = best.fun[:-p]
    inflate = max(1.0, float(data @ data) / max(len(data), 1))
    cov = np.linalg.pinv(best.jac.T @ best.jac, rcond=1e-10) * inflate
    config = at(u)
    obs = frame[frame.drop(columns="cycle").notna().any(axis=1)]
    sim = simulate_candidates(config)
    mapped, maps = observe(sim, obs)
    table = residual_table(obs, mapped)
    sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    low, high = from_unit(u - 1.645 * sd, lo, hi, log), from_unit(u + 1.645 * sd, lo, hi, log)
    cal = Calibration(
        params={k: float(config_value(config, k)) for k in keys},
        stderr={k: float((b - a) / (2 * 1.645)) for k, a, b in zip(keys, low, high)},
        interval={k: (float(a), float(b)) for k, a, b in zip(keys, low, high)},
        residuals=table,
        fitted=fitted_frame(sim, mapped),
        rmse=rmse_by_column(table),
        config=config,
        maps=maps,
        info={
            "loss": float(data @ data),
            "prior_loss": float(best.fun[-p:] @ best.fun[-p:]),
            "prior_sd": PRIOR_SD,
            "evaluations": count[0],
            "trials": trials,
            "seed": seed,
            "max_nfev": max_nfev,
        },
    )
    return cal, cov


def posterior_draws(cal: Calibration, cov: np.ndarray, n: int, rng) -> list[dict[str, float]]:
    """`n` parameter sets from the Laplace approximation of the paper model's posterior (normal
    around the MAP fit in optimizer coordinates, clipped to the box)."""
    keys, lo, hi, log = box("paper")
    u0 = to_unit(np.array([cal.params[k] for k in keys]), lo, hi, log)
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    root = v * np.sqrt(np.clip(w, 0, None))
    draws = np.clip(u0 + rng.standard_normal((n, len(keys))) @ root.T, 0, 1)
    return [{k: float(x) for k, x in zip(keys, from_unit(u, lo, hi, log))} for u in draws]


def region(frame, cal: Calibration, generator, scales, n, rng, note: Note, level: float):
    """Parameter sets inside the fit's confidence region of nonlinear least squares (Beale's
    bound: loss ≤ best · (1 + p/(m − p) · F(p, m − p))), sampled along the fit's linearized
    covariance at `STRETCH` times its size; every loss at the fit's simulation seed, so they
    compare. The learned generator's band (too costly for a posterior of many draws).
    Returns the sets (random order), how many were tried, and the bound."""
    keys, lo, hi, log = box(generator)
    u0 = to_unit(np.array([cal.params[k] for k in keys]), lo, hi, log)

    def resid(u: np.ndarray) -> np.ndarray:
        params = {k: float(v) for k, v in zip(keys, from_unit(u, lo, hi, log))}
        return residuals(frame, cal.config.with_overrides(params), scales)

    r0 = resid(u0)
    best, (m, p) = float(r0 @ r0), (len(r0), len(keys))
    jac = np.empty((m, p))
    for i in range(p):  # forward differences, stepping into the box
        note(f"sampling around the fit: derivative {i + 1}/{p}")
        h = STEP if u0[i] + STEP <= 1 else -STEP
        jac[:, i] = (resid(u0 + h * np.eye(p)[i]) - r0) / h
    cov = np.linalg.pinv(jac.T @ jac, rcond=1e-8) * best / max(m - p, 1)
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    root = v * np.sqrt(np.clip(w, 0, None))
    bound = best * (1 + p / (m - p) * f_dist.ppf(level, p, m - p)) if m > p else 2 * best
    inside = []
    for i in range(n):
        note(f"sampling around the fit: {i + 1}/{n}")
        u = np.clip(u0 + STRETCH[i % len(STRETCH)] * root @ rng.standard_normal(p), 0, 1)
        r = resid(u)
        if float(r @ r) <= bound:
            inside.append({k: float(x) for k, x in zip(keys, from_unit(u, lo, hi, log))})
    order = rng.permutation(len(inside))
    return [inside[i] for i in order], n, bound


def heldout_error(cal: Calibration, hold: pd.DataFrame, scale_from: pd.DataFrame) -> float:
    """RMS over the held-out cells of (observed − fitted) / the column's observed spread."""
    errs = []
    fitted = cal.fitted.set_index("cycle")
    for col in hold.columns.drop("cycle"):
        if col not in fitted:
            continue
        for cycle, value in zip(hold["cycle"], hold[col]):
            if pd.notna(value):
                err = (value - fitted.at[cycle, col]) / spread(scale_from[col])
                errs.append(float(err) if np.isfinite(err) else 1.0)
    return float(np.sqrt(np.mean(np.square(errs)))) if errs else float("inf")
