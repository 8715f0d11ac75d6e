"""`archrefine calibrate`: fit a generator's free parameters to an observed per-cycle trajectory.

The simulator is stochastic, so every evaluation of the objective runs with the same seed (common
random numbers): the objective is then a deterministic function of the parameters, smooth at the
scale of many Bernoulli draws though flat at the scale of one. A bounded
`scipy.optimize.least_squares` (trust region reflective) with a large finite-difference step
(`diff_step`, 5% of each parameter's range) sees that smooth shape instead of the flat steps.
docs/calibration.md gives the mapping of each observed column and the reasons. What the fit shares
with forecast and leave-one-out (simulate, map onto the observed columns, compare) is `fitting.py`.
Over 400 lines because each generator's starts (cycle 1's logit, the slow learning rate, drift's
peak start) are read off the data here, beside the fit they start.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from archrefine.core.config import Config, ConfigError
from archrefine.experiments.evaluations import Evaluations, FitStart, default_workers
from archrefine.experiments.fitting import (  # noqa: F401 - re-exported, as before the split
    ACCURACY_CUT,
    COLUMNS,
    DIRECT,
    FITNESS_CUT,
    KNOWN_COLUMNS,
    NOVEL_CUT,
    SCALED,
    Simulated,
    bootstrap,
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
from archrefine.experiments.trajectory import (  # noqa: F401 - re-exported, as before the split
    KHALID,
    CalibrationError,
    check_trajectory,
    load_trajectory,
    read_trajectory,
)

#: the paper model's free parameters and their bounds (docs/calibration.md says why)
PAPER_PARAMS: dict[str, tuple[float, float]] = {
    "generator.base_logit": (-1.0, 6.0),
    "generator.bonus_max": (0.0, 6.0),
    "generator.bonus_rate": (0.01, 0.5),
    "generator.familiarity": (0.0, 2.0),
    "generator.prior_rate": (0.05, 1.0),
}

#: the learned generator's free parameters (docs/calibration.md): fine-tuning speed, where
#: pre-training stops (cycle-1 validity) and how wrong the pre-trained model stays
LEARNED_PARAMS: dict[str, tuple[float, float]] = {
    "generator.learned.lr": (1e-5, 3e-2),
    "generator.learned.target_validity": (0.1, 0.9),
    "generator.learned.pretrain_noise": (0.0, 0.5),
}

#: `generator="drift"`: the paper generator with self-consumption drift (sim/drift.py), four
#: free parameters, fewer than the five observed valid rates (docs/rise-and-fall.md)
DRIFT_PARAMS: dict[str, tuple[float, float]] = {
    "generator.base_logit": (-1.0, 6.0),
    "generator.bonus_max": (0.0, 6.0),
    "generator.bonus_rate": (0.01, 0.5),
    "generator.drift": (0.0, 1.0),
}
DRIFT_START = 0.1  # the peak start's drift when the observed rate does not fall after its peak

#: `generator="drift-set"`: drift with a bonus that grows with the accumulated fine-tuning set
#: (`generator.bonus_growth = "set"`); three free, bonus_max at its default, bonus_rate on a log
#: scale (docs/rise-and-fall.md, "A rise that accelerates": chosen before any fit)
DRIFT_SET_PARAMS: dict[str, tuple[float, float]] = {
    k: v for k, v in DRIFT_PARAMS.items() if k != "generator.bonus_max"
} | {"generator.bonus_rate": (0.001, 0.5)}
DRIFTS = ("drift", "drift-set")  # the paper generator with self-consumption drift

#: parameters searched on a log scale (the optimizer moves their logarithm)
LOG_SCALE = {"generator.learned.lr", "generator.learned.pretrain_lr"}

#: the learned generator's second start: fine-tuning slow enough that validity rises over all
#: 22 cycles rather than in the first five (docs/calibration.md)
SLOW_LR = 2e-5

#: defaults for `trials` and `max_nfev` where the caller gives none: each learned evaluation
#: pre-trains and fine-tunes transformers for every cycle (about 10 s per run of 2 trials)
DEFAULT_BUDGET = {"paper": (30, 30), "learned": (2, 3), "drift": (30, 30), "drift-set": (30, 30)}

DIFF_STEP = 0.05  # finite-difference step, as a share of each parameter's range


@dataclass
class Calibration:
    """A finished fit. `params` are the fitted values by dotted config key."""

    params: dict[str, float]
    stderr: dict[str, float]
    interval: dict[str, tuple[float, float]]
    residuals: pd.DataFrame  # cycle, column, observed, fitted, residual (observed − fitted)
    fitted: pd.DataFrame  # per-cycle simulated means at the fitted parameters, observed units
    rmse: dict[str, float]
    config: Config
    maps: dict[str, float] = field(default_factory=dict)  # the profiled observation maps
    info: dict[str, Any] = field(default_factory=dict)  # loss at start and end, evaluations
    loo: pd.DataFrame | None = None  # leave-one-cycle-out predictions (experiments/loo.py)
    loo_rmse: dict[str, float] | None = None  # their RMSE per column


def free_params(generator: str, params=None) -> dict[str, tuple[float, float]]:
    """The parameters `calibrate` fits, `{key: (lo, hi)}`; raises for an unsupported generator."""
    if generator not in DEFAULT_BUDGET:
        raise CalibrationError(
            f"generator: {generator!r} is not one of paper, learned, drift, drift-set"
        )
    defaults = {
        "paper": PAPER_PARAMS,
        "learned": LEARNED_PARAMS,
        "drift": DRIFT_PARAMS,
        "drift-set": DRIFT_SET_PARAMS,
    }[generator]
    if params is None:
        return dict(defaults)
    if isinstance(params, Mapping):
        out = {k: (float(lo), float(hi)) for k, (lo, hi) in params.items()}
        if bad := [k for k, (lo, _) in out.items() if k in LOG_SCALE and lo <= 0]:
            raise CalibrationError(f"params: {', '.join(bad)} is fitted on a log scale: lo > 0")
        _check_used(generator, list(out))
        return out
    if isinstance(params, Sequence) and not isinstance(params, str):
        if twice := sorted({p for p in params if list(params).count(p) > 1}):
            raise CalibrationError(f"params: {', '.join(twice)} named more than once")
        unknown = [p for p in params if p not in defaults]
        if unknown:
            raise CalibrationError(
                f"params: no default bounds for {', '.join(unknown)}; pass {{key: (lo, hi)}} "
                f"or choose from {', '.join(defaults)}"
            )
        return {p: defaults[p] for p in params}
    raise CalibrationError("params: expected a list of keys or a {key: (lo, hi)} mapping")


def _check_used(generator: str, keys: Sequence[str]) -> None:
    """Refuse a parameter the generator never reads (the learned generator's with the paper
    model, or the paper model's with the learned one): the fit could not move it, and its
    interval would be the bounds given, which reads like a result."""
    learned = generator == "learned"
    fits = "generator.learned.*" if learned else "generator.* other than generator.learned.*"
    unused = [
        k for k in keys
        if k.startswith("generator.") and k.startswith("generator.learned.") != learned
    ]  # fmt: skip
    if unused:
        raise CalibrationError(
            f"params: the {generator} generator does not use {', '.join(unused)}; "
            f"fit {fits} or another section's keys"
        )


def check_columns(columns: Sequence[str] | None, present: Sequence[str], name: str) -> None:
    """Refuse a `columns` list that names one twice, one that is not a fitted column (`cycle`,
    another CSV column) or one not in the trajectory (whose columns are `present`): cheap, so
    the command calls it before its run directory is made."""
    if columns is None:
        return
    if not columns:
        raise CalibrationError("--columns: no column named")
    if twice := sorted({c for c in columns if list(columns).count(c) > 1}):
        raise CalibrationError(f"--columns: {', '.join(twice)} named more than once")
    if other := [c for c in columns if c not in KNOWN_COLUMNS]:
        raise CalibrationError(
            f"--columns: {', '.join(other)} is not a fitted column; choose from "
            f"{', '.join(KNOWN_COLUMNS)}"
        )
    if missing := [c for c in columns if c not in present]:
        raise CalibrationError(f"--columns: {', '.join(missing)} not in {name}")


def parse_params(text: str, generator: str) -> dict[str, tuple[float, float]]:
    """`--params`: comma-separated `KEY` (bounds from the generator's set, else from any
    generator's that has the key) or `KEY=LO:HI`, as `{key: (lo, hi)}`."""
    known = PAPER_PARAMS | LEARNED_PARAMS | DRIFT_PARAMS | free_params(generator)
    out: dict[str, tuple[float, float]] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, _, bounds = (p.strip() for p in item.partition("="))
        if key in out:
            raise CalibrationError(f"--params: {key} named more than once")
        try:
            value = config_value(Config(), key)
        except AttributeError:
            raise CalibrationError(f"--params: {key!r} is not a config key") from None
        if not isinstance(value, float):  # an integer, a choice, a section: not fitted by steps
            held = "a section" if hasattr(value, "model_fields") else f"its default is {value!r}"
            raise CalibrationError(
                f"--params: {key} is not a real-valued parameter ({held}); only those are fitted"
            )
        if not bounds:
            if key not in known:
                raise CalibrationError(f"--params: no default bounds for {key}; give {key}=LO:HI")
            out[key] = known[key]
            continue
        try:
            lo, hi = (float(x) for x in bounds.split(":"))
        except ValueError:
            raise CalibrationError(f"--params: {item!r} is not KEY=LO:HI") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise CalibrationError(f"--params: {key} needs finite bounds LO < HI, got {bounds}")
        for end in (lo, hi):  # else the fit stops with that error midway, the run unfinished
            try:
                Config().with_overrides({key: end})
            except ConfigError as err:
                raise CalibrationError(f"--params: {key}={bounds}: {err}") from None
        out[key] = (lo, hi)
    if not out:
        raise CalibrationError("--params: no parameter named")
    return free_params(generator, out)


def calibrate(
    trajectory: pd.DataFrame,
    *,
    generator: str = "paper",
    params: Mapping[str, tuple[float, float]] | Sequence[str] | None = None,
    base: Config | None = None,
    trials: int | None = None,
    seed: int = 0,
    n_boot: int = 50,
    columns: Sequence[str] | None = None,
    max_nfev: int | None = None,
    cycles: int | None = None,
    on_evaluation: Callable[[int], None] | None = None,
    scales: Mapping[str, float] | None = None,
    workers: int | None = None,
    run_means: Mapping[str, float] | None = None,
) -> Calibration:
    """Fit a generator's parameters so its per-cycle means match an observed trajectory.

    Parameters
    ----------
    trajectory : a frame with `cycle` and any of `validity, mean_accuracy, share_above_40,
        novel_admitted` (NaN = not observed). The run length is the largest cycle.
    generator : "paper", or "learned" (the small transformer; the space is set to grounded,
        the only one it writes), or "drift" (the paper generator with self-consumption drift,
        sim/drift.py; a third start puts the bonus's end at the observed validity peak).
    params : keys to fit (default bounds) or `{key: (lo, hi)}`; default `PAPER_PARAMS` or
        `LEARNED_PARAMS`. Keys in `LOG_SCALE` are searched on a log scale.
    base : the config whose other values are kept, and whose values are the starting point.
    trials, seed : replicates per evaluation (default 30 paper, 2 learned) and the one seed
        every evaluation uses.
    n_boot : residual-bootstrap resamples for the standard errors and 90% intervals.
    columns : which observed columns to fit (default every known column present).
    max_nfev : most optimizer iterations per start (each also costs one simulation per
        parameter for its finite-difference Jacobian); default 30 paper, 3 learned. Two
        starts: `base`, and `base` with base_logit solved from the observed cycle-1 validity
        when there is one (learned: `base` with the slow fine-tuning rate `SLOW_LR`).
    cycles : how many cycles every evaluation simulates (default: the largest observed cycle);
        more than observed when a forecast fits the first cycles of a longer run, whose
        schedule depends on its length.
    on_evaluation : called with the running count after each simulation (a progress bar).
    scales : what each column's residuals are divided by (default: its observed spread), e.g.
        standard errors where the observation noise is known.
    workers : processes that run simulations at once (a Jacobian's columns; the starts run in
        threads); default: every core for the learned generator, 1 otherwise (a paper run is
        too short to pay for a process). The fit is the same for any number.
    run_means : observed means of fitted columns over the whole run, cycles 1 to `cycles`
        (`read_trajectory` reads them from a CSV's `all` row); each is one more residual, the
        simulated curve's mean over every cycle, weighed as one observed value of its column.

    Returns
    -------
    Calibration

    Example
    -------
    >>> cal = calibrate(load_trajectory(KHALID), trials=20, n_boot=20)  # doctest: +SKIP
    """
    bounds = free_params(generator, params)
    trials = DEFAULT_BUDGET[generator][0] if trials is None else trials
    max_nfev = DEFAULT_BUDGET[generator][1] if max_nfev is None else max_nfev
    obs = check_trajectory(trajectory)
    check_columns(columns, list(obs.columns), "the trajectory")
    use = [c for c in (columns or KNOWN_COLUMNS) if c in obs.columns]
    obs = obs[["cycle", *use]]
    obs = obs[obs[use].notna().any(axis=1)].reset_index(drop=True)
    means = dict(run_means or {})
    if bad := [c for c in means if c not in use]:
        raise CalibrationError(f"run means: {', '.join(bad)} is not a fitted column")
    base = (base or Config()).with_overrides(
        {
            "generator.kind": "paper" if generator in DRIFTS else generator,
            "trials": trials,
            "seed": seed,
            "loop.cycles": max(int(obs["cycle"].max()), cycles or 0),
        }
        | ({"space.kind": "grounded"} if generator == "learned" else {})
        | ({"generator.bonus_growth": "set"} if generator == "drift-set" else {})
    )
    keys = list(bounds)
    lo = np.array([bounds[k][0] for k in keys])
    hi = np.array([bounds[k][1] for k in keys])
    log_scale = LOG_SCALE | ({"generator.bonus_rate"} if generator == "drift-set" else set())
    log = np.array([k in log_scale for k in keys])
    start = np.array([float(config_value(base, k)) for k in keys])
    scale = {c: (scales or {}).get(c) or spread(obs[c]) for c in use}
    objective = _Objective(base, tuple(keys), lo, hi, log, obs, scale, means)
    config_at = objective.config_at
    if workers is None:
        workers = default_workers() if generator == "learned" else 1
    same = _same_pretraining(objective) if generator == "learned" else None
    preload = ["archrefine.sim.learned"] if generator == "learned" else []  # torch, once
    evals = Evaluations(objective, workers, on_evaluation, same, preload)  # each point once

    def residuals(u: np.ndarray) -> np.ndarray:
        return evals(u)[0].copy()

    starts = [to_unit(start, lo, hi, log)]
    x = _first_cycle_logit(obs, base, earliest=generator in DRIFTS)
    if x is not None and "generator.base_logit" in keys:
        i = keys.index("generator.base_logit")  # cycle 1 is all fresh from a uniform prior:
        u1 = starts[0].copy()  # its validity is ceiling · σ(base_logit)^d, solved for base_logit
        u1[i] = np.clip((x - lo[i]) / (hi[i] - lo[i]), 0, 1)
        starts.append(u1)
    if generator == "learned" and "generator.learned.lr" in keys:
        i = keys.index("generator.learned.lr")
        u1 = starts[0].copy()
        u1[i] = to_unit(np.array([SLOW_LR]), lo[i : i + 1], hi[i : i + 1], log[i : i + 1])[0]
        starts.append(u1)
    if (
        generator in DRIFTS
        and (peak := _peak_start(obs, base, keys, lo, hi, starts[-1], log)) is not None
    ):
        starts.append(peak)

    def solve(fun, u0: np.ndarray, budget: int, columns):
        return least_squares(
            fun, u0, bounds=(0, 1), diff_step=DIFF_STEP, max_nfev=budget, x_scale=1.0,
            **({"workers": columns} if _HAS_WORKERS else {}),
        )  # fmt: skip

    def run(u0: np.ndarray):  # a start skips the Jacobian after its last step (FitStart)
        start = FitStart(residuals, evals, max_nfev)
        return solve(start, u0, max_nfev, start.map), start

    try:
        for u0 in starts if workers > 1 else ():  # every start's first point at once: no
            evals.future(u0)  # worker idles while the first start's point runs alone
        r0 = residuals(starts[0])
        if workers > 1 and len(starts) > 1:  # independent starts share the pool
            with ThreadPoolExecutor(len(starts)) as threads:
                fits = list(threads.map(run, starts))
        else:
            fits = [run(u0) for u0 in starts]
        fit, kept = min(fits, key=lambda f: f[0].cost)  # the first of equals, as before
        if kept.skipped and n_boot >= 2:  # the Jacobian least_squares ended with, for the
            # bootstrap (which reads none below 2 resamples: forecast's fits skip it)
            fit.jac = solve(residuals, fit.x, 1, evals.map).jac
        u = fit.x if (fit.fun**2).sum() <= (r0**2).sum() else starts[0]
        sim = evals(u)[1]  # simulated already during the fit: not run again
    finally:
        evals.close()
    config = config_at(u)
    mapped, maps = observe(sim, obs)
    table = residual_table(obs, mapped, means)
    stderr, interval = bootstrap(fit.jac, fit.fun, u, lo, hi, log, keys, n_boot, seed)
    return Calibration(
        params={k: float(config_value(config, k)) for k in keys},
        stderr=stderr,
        interval=interval,
        residuals=table,
        fitted=fitted_frame(sim, mapped),
        rmse=rmse_by_column(table),
        config=config,
        maps=maps,
        info={
            "loss_start": float((r0**2).sum()),
            "loss": float((fit.fun**2).sum()),
            "evaluations": evals.count,
            "trials": trials,
            "seed": seed,
            "n_boot": n_boot,
            "max_nfev": max_nfev,
        }
        | ({"run_means": means} if means else {}),
    )


#: scipy ≥ 1.16 takes a map for the finite-difference columns; older ones evaluate them in turn
_HAS_WORKERS = "workers" in inspect.signature(least_squares).parameters


@dataclass(frozen=True)
class _Objective:
    """Scaled residuals (and the simulation behind them) at optimizer coordinates `u`; a
    module-level class so that worker processes can receive it."""

    base: Config
    keys: tuple[str, ...]
    lo: np.ndarray
    hi: np.ndarray
    log: np.ndarray
    obs: pd.DataFrame
    scale: dict[str, float]
    means: dict[str, float] = field(default_factory=dict)

    def config_at(self, u: np.ndarray) -> Config:
        values = from_unit(u, self.lo, self.hi, self.log)
        return self.base.with_overrides({k: float(v) for k, v in zip(self.keys, values)})

    def __call__(self, u: np.ndarray) -> tuple[np.ndarray, Simulated, tuple]:
        """Residuals, the simulation, and (learned) where its pre-training stopped."""
        config = self.config_at(u)
        sim = simulate_candidates(config)
        table = residual_table(self.obs, observe(sim, self.obs)[0], self.means)
        r = table["residual"].to_numpy() / residual_scales(table, self.scale)
        stops = ()
        if config.generator.kind == "learned":
            from archrefine.sim.learned import LAST_PRETRAINING as stops
        return np.nan_to_num(r, nan=1.0), sim, stops  # nothing valid anywhere: a unit miss


def _same_pretraining(objective: _Objective):
    """`Evaluations.same_as` for the learned generator: a point that differs from a simulated
    one only in `target_validity`, where pre-training stops at the same probe for both, runs
    the same simulation, bit for bit (a Jacobian's `target_validity` column often does: the
    probes' validity moves in steps larger than the 5% finite-difference step)."""
    key = "generator.learned.target_validity"
    if key not in objective.keys:
        return None
    i = objective.keys.index(key)
    from archrefine.sim.stops import same_stop  # no torch in this process (sim/stops.py)

    def same_as(u: np.ndarray, point: np.ndarray, value: tuple) -> bool:
        other = np.arange(len(u)) != i
        if not value[2] or not np.array_equal(u[other], point[other]):
            return False
        target = config_value(objective.config_at(point), key)
        return same_stop(value[2], target, config_value(objective.config_at(u), key))

    return same_as


def _peak_start(
    obs: pd.DataFrame, base: Config, keys: list[str], lo, hi, u: np.ndarray, log=None
) -> np.ndarray | None:
    """Drift's third start, by matching the model's per-token log-odds to the observed rise and
    fall: the bonus completes at the observed validity peak p (one full round per cycle), the
    drift is the log-odds lost per cycle from p to the last cycle, bonus_max and base_logit
    give the rise from the first observed cycle to p. A start only (each valid rate read as
    ceiling · σ(L)^d, as if every token were written); None without an interior peak. With
    `bonus_growth = "set"` round j teaches j steps, so the bonus completes at p when
    bonus_rate = 2 / (p (p − 1))."""
    if "validity" not in obs or base.space.kind != "abstract":
        return None
    v = obs.dropna(subset=["validity"])
    v = v[(v["validity"] > 0) & (v["validity"] < base.generator.ceiling)]
    peak = int(v.loc[v["validity"].idxmax(), "cycle"]) if len(v) else 0
    first, last = (int(v["cycle"].min()), int(v["cycle"].max())) if len(v) else (0, 0)
    if peak <= first + 1 or peak >= last:
        return None
    q = (v.set_index("cycle")["validity"] / base.generator.ceiling) ** (1 / base.space.length)
    logit = np.log(q / (1 - q))
    drift = (logit[peak] - logit[last]) / (last - peak)
    rise = (logit[peak] - logit[first]) / (peak - first)  # net log-odds gained per cycle
    growing = base.generator.bonus_growth == "set"
    values = {
        "generator.bonus_rate": 2 / (peak * (peak - 1)) if growing else 1 / (peak - 1),
        "generator.drift": drift if drift > 0 else DRIFT_START,
        "generator.bonus_max": (rise + max(drift, 0)) * (peak - 1),
        "generator.base_logit": logit[first] - rise * (first - 1),
    }
    out = u.copy()
    for key, value in values.items():
        if key in keys:
            i = keys.index(key)
            one = (np.array([value]), lo[i : i + 1], hi[i : i + 1])
            out[i] = np.clip(to_unit(*one, np.array([log is not None and log[i]]))[0], 0, 1)
    return out


def _first_cycle_logit(obs: pd.DataFrame, base: Config, earliest: bool = False) -> float | None:
    """The base_logit that gives the observed cycle-1 validity, or None if not observed.
    `earliest`: without cycle 1, the earliest observed valid rate stands in (a start only)."""
    if "validity" not in obs or base.space.kind != "abstract":
        return None
    v = obs.loc[obs["cycle"] == 1, "validity"]
    if v.empty and earliest:
        v = obs["validity"].dropna().iloc[:1]
    if v.empty or not (0 < float(v.iloc[0]) < base.generator.ceiling):
        return None
    p = (float(v.iloc[0]) / base.generator.ceiling) ** (1 / base.space.length)
    return float(np.log(p / (1 - p)))
