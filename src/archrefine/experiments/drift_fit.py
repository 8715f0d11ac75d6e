"""Regularized drift fits and their leave-one-cycle-out check: does any honest constraint make
the drift model predict a cycle of Khalid et al. it did not see?

`calibrate --generator drift` fits four parameters by least squares from three starts, two of
them read off the fitted data. Its leave-one-out validity RMSE on khalid2026.csv is 0.199 where
the issue asks for 0.08 (docs/rise-and-fall.md). Three remedies are tried here, each the same for
every refit so that folds differ only in the cycle they lack:

* a MAP fit: a normal prior on each parameter in optimizer coordinates, centred on the
  defaults calibrated to the seed paper's runs (docs/model.md) *before* Khalid's data were
  looked at, `drift` centred on 0 (off), added to the residuals as pseudo-observations — the
  prior of `forecast_fit` (its `PRIOR_SD`);
* fewer free parameters: fix some at their defaults, so that each refit has fewer free
  parameters than its four valid rates;
* shared starts that read nothing from the data: the defaults and a scrambled-Sobol screen of
  the box, the best few (penalized loss on the fold's own cycles) refined.

Every evaluation uses one seed (common random numbers), as `calibrate` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import least_squares
from scipy.stats import qmc

from archrefine.core.config import Config
from archrefine.experiments.calibrate import DIFF_STEP, DRIFT_PARAMS, CalibrationError
from archrefine.experiments.fitting import (
    Simulated,
    config_value,
    fitted_frame,
    from_unit,
    observe,
    residual_scales,
    residual_table,
    rmse_by_column,
    simulate_candidates,
    spread,
    to_unit,
)
from archrefine.experiments.loo import LOO_COLUMNS, observed_cycles, thin_fold

#: the drift model's parameters and bounds: calibrate's DRIFT_PARAMS with bonus_max's bound
#: raised to hold its default (8.0), as forecast_fit does for the paper model
BOX: dict[str, tuple[float, float]] = DRIFT_PARAMS | {"generator.bonus_max": (0.0, 10.0)}
LOG = frozenset({"generator.bonus_rate"})  # searched on a log scale (default near its bottom)
#: `bonus_growth = "set"` (sim/drift.py `SetGrowth`): round t teaches t steps, so the rate that
#: completes the bonus inside a run is far smaller: its bound goes down to 0.001
SET_BOX = BOX | {"generator.bonus_rate": (0.001, 0.5)}
#: a drift this small builds the mechanism (so its finite differences see it) and costs nothing
TINY_DRIFT = 1e-9


@dataclass(frozen=True)
class Variant:
    """One way of fitting: which parameters are fixed (at `fixed`'s values), the prior's
    standard deviation in each parameter's [0, 1] range (None: least squares), how many Sobol
    points are screened and how many of the best starts are refined; `growth` is
    `generator.bonus_growth` ("set": the bonus grows with the accumulated fine-tuning set)."""

    name: str
    fixed: Mapping[str, float] = field(default_factory=dict)
    prior_sd: float | None = None
    screen: int = 16
    keep: int = 2
    growth: str = "round"

    def box(self) -> dict[str, tuple[float, float]]:
        return SET_BOX if self.growth == "set" else BOX


@dataclass
class DriftFit:
    """A fit of one variant to one set of cycles."""

    params: dict[str, float]
    fitted: pd.DataFrame  # per-cycle simulated means, observed units
    rmse: dict[str, float]
    loss: float  # data part of the (penalized) loss


class _Problem:
    """Scaled residuals (plus the prior's pseudo-residuals) at optimizer coordinates."""

    def __init__(
        self,
        variant: Variant,
        base: Config,
        scales: Mapping[str, float],
        means: Mapping[str, float] | None = None,
    ):
        box = variant.box()
        self.keys = [k for k in box if k not in variant.fixed]
        if not self.keys:
            raise CalibrationError(f"variant {variant.name!r}: every parameter is fixed")
        self.lo = np.array([box[k][0] for k in self.keys])
        self.hi = np.array([box[k][1] for k in self.keys])
        self.log = np.array([k in LOG for k in self.keys])
        default = Config()
        centre = [float(config_value(default, k)) for k in self.keys]
        self.centre = to_unit(np.array(centre), self.lo, self.hi, self.log)
        self.sd = variant.prior_sd
        over = {"generator.drift": TINY_DRIFT, "generator.bonus_growth": variant.growth}
        self.base = base.with_overrides(over | dict(variant.fixed))
        self.scales = dict(scales)
        self.means = dict(means or {})
        self.cache: dict[tuple, Simulated] = {}

    def simulate(self, u: np.ndarray) -> Simulated:
        key = tuple(np.round(u, 12))
        if key not in self.cache:
            values = from_unit(u, self.lo, self.hi, self.log)
            over = {k: float(v) for k, v in zip(self.keys, values)}
            self.cache[key] = simulate_candidates(self.base.with_overrides(over))
        return self.cache[key]

    def data(self, u: np.ndarray, obs: pd.DataFrame) -> np.ndarray:
        table = residual_table(obs, observe(self.simulate(u), obs)[0], self.means)
        r = table["residual"].to_numpy() / residual_scales(table, self.scales)
        return np.nan_to_num(r, nan=1.0)  # nothing valid: a unit miss

    def residuals(self, u: np.ndarray, obs: pd.DataFrame) -> np.ndarray:
        prior = np.empty(0) if self.sd is None else (u - self.centre) / self.sd
        return np.concatenate([self.data(u, obs), prior])


def fit_drift(
    obs: pd.DataFrame,
    variant: Variant,
    base: Config,
    scales: Mapping[str, float],
    max_nfev: int,
    means: Mapping[str, float] | None = None,
) -> DriftFit:
    """Fit `variant` to `obs` (cycle + observed columns, and any run `means`) from the shared
    starts."""
    problem = _Problem(variant, base, scales, means)
    n = len(problem.keys)
    points = [problem.centre, *qmc.Sobol(n, seed=0).random(variant.screen)]
    losses = [float(np.sum(problem.residuals(p, obs) ** 2)) for p in points]
    starts = [points[i] for i in np.argsort(losses, kind="stable")[: max(variant.keep, 1)]]
    fits = [
        least_squares(
            lambda u: problem.residuals(u, obs),
            s,
            bounds=(0, 1),
            diff_step=DIFF_STEP,
            max_nfev=max_nfev,
            x_scale=1.0,
        )
        for s in starts
    ]
    best = min(fits, key=lambda f: f.cost)
    sim = problem.simulate(best.x)
    mapped, _ = observe(sim, obs)
    table = residual_table(obs, mapped, means)
    values = from_unit(best.x, problem.lo, problem.hi, problem.log)
    data = problem.data(best.x, obs)
    return DriftFit(
        params={k: float(v) for k, v in zip(problem.keys, values)} | dict(variant.fixed),
        fitted=fitted_frame(sim, mapped),
        rmse=rmse_by_column(table),
        loss=float(data @ data),
    )


def drift_loo(
    trajectory: pd.DataFrame,
    variant: Variant,
    *,
    columns: tuple[str, ...] = ("validity", "mean_accuracy"),
    trials: int = 30,
    seed: int = 0,
    max_nfev: int = 15,
    base: Config | None = None,
    run_means: Mapping[str, float] | None = None,
) -> tuple[DriftFit, pd.DataFrame, dict[str, float]]:
    """`variant` fitted to every observed cycle, and refitted once per cycle without it.

    Returns the full fit, the held-out table (cycle, column, observed, predicted, residual)
    and the leave-one-out RMSE per column. Each column is divided by the spread of the whole
    trajectory in every fold, as `loo.leave_one_out` does; `run_means` (means over every cycle,
    `calibrate --run-means`) stay in every refit. Raises `CalibrationError` where a
    refit would have as many free parameters (the model's and the accuracy map's two) as
    observed values.
    """
    obs, use = observed_cycles(trajectory, columns)
    if missing := [c for c in columns if c not in use]:
        raise CalibrationError(f"columns: {', '.join(missing)} not in the trajectory")
    scales = {c: spread(obs[c]) for c in columns}
    cycles = int(obs["cycle"].max())
    base = (base or Config()).with_overrides(
        {"generator.kind": "paper", "trials": trials, "seed": seed, "loop.cycles": cycles}
    )
    free = len([k for k in variant.box() if k not in variant.fixed])
    free += 2 * ("mean_accuracy" in columns)
    means = dict(run_means or {})
    thin = thin_fold(obs, columns, lambda keep: free, means)  # before any simulation
    if thin is not None:
        cycle, values, _ = thin
        raise CalibrationError(
            f"variant {variant.name!r}: {free} free parameters for {values} observed values "
            f"without cycle {cycle}; fix more parameters"
        )
    full = fit_drift(obs, variant, base, scales, max_nfev, means)
    rows = []
    for cycle in obs["cycle"]:
        train = obs[obs["cycle"] != cycle]
        fit = fit_drift(train, variant, base, scales, max_nfev, means)
        held = obs.loc[obs["cycle"] == cycle].iloc[0]
        for col in columns:
            if pd.notna(held[col]):
                predicted = float(fit.fitted[col].iloc[cycle - 1])
                rows.append((int(cycle), col, float(held[col]), predicted, held[col] - predicted))
    table = pd.DataFrame(rows, columns=LOO_COLUMNS)
    return full, table, rmse_by_column(table)
