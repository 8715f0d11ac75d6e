# Over 400 lines: the fit, its parameter table and its bootstrap share one model (output: *_report).
"""`archrefine calibrate`: fit a generator's free parameters to an observed per-cycle trajectory.

The simulator is stochastic, so every evaluation of the objective runs with the same seed (common
random numbers): the objective is then a deterministic function of the parameters, smooth at the
scale of many Bernoulli draws though flat at the scale of one. A bounded
`scipy.optimize.least_squares` (trust region reflective) with a large finite-difference step
(`diff_step`, 5% of each parameter's range) sees that smooth shape instead of the flat steps.
docs/calibration.md gives the mapping of each observed column and the reasons.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from archrefine.core.config import Config, ConfigError
from archrefine.experiments.evaluations import Evaluations, default_workers
from archrefine.sim.loop import simulate

KHALID = resources.files("archrefine") / "data" / "khalid2026.csv"

COLUMNS = ("validity", "mean_accuracy", "share_above_40", "novel_admitted")
#: simulator metrics in simulator units (an `archrefine run`'s means), compared as they are
DIRECT = ("novelty", "diversity", "fitness")
#: a real loop's code novelty and diversity: compared up to a scale c ≥ 0 (fitted in closed form)
SCALED = {"code_novelty": "novelty", "code_diversity": "diversity"}
KNOWN_COLUMNS = (*COLUMNS, *DIRECT, *SCALED)

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

#: parameters searched on a log scale (the optimizer moves their logarithm)
LOG_SCALE = {"generator.learned.lr", "generator.learned.pretrain_lr"}

#: the learned generator's second start: fine-tuning slow enough that validity rises over all
#: 22 cycles rather than in the first five (docs/calibration.md)
SLOW_LR = 2e-5

#: defaults for `trials` and `max_nfev` where the caller gives none: each learned evaluation
#: pre-trains and fine-tunes transformers for every cycle (about 10 s per run of 2 trials)
DEFAULT_BUDGET = {"paper": (30, 30), "learned": (2, 3), "drift": (30, 30)}

ACCURACY_CUT = 0.40  # share_above_40: accuracy above 40%, mapped to fitness by the affine map
FITNESS_CUT = 0.60  # ... or this NK fitness when mean_accuracy is not observed
NOVEL_CUT = 0.80  # novel_admitted: valid candidates at least this novel (normalized Hamming)
DIFF_STEP = 0.05  # finite-difference step, as a share of each parameter's range


class CalibrationError(ConfigError):
    """A bad trajectory or calibration request, in one line (a ValueError, like ConfigError)."""


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
    info: dict[str, float] = field(default_factory=dict)  # loss at start and end, evaluations
    loo: pd.DataFrame | None = None  # leave-one-cycle-out predictions (experiments/loo.py)
    loo_rmse: dict[str, float] | None = None  # their RMSE per column


def load_trajectory(path: str | Path) -> pd.DataFrame:
    """Read an observed trajectory CSV (`#` lines are comments); empty cells are NaN."""
    path = Path(str(path))
    try:
        frame = pd.read_csv(path, comment="#", skip_blank_lines=True)
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no such file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CalibrationError(f"{path}: not a readable CSV ({first})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return check_trajectory(frame, name=str(path))


def check_trajectory(frame: pd.DataFrame, *, name: str = "trajectory") -> pd.DataFrame:
    """Validate columns and cycles; return a copy with numeric columns and integer cycles."""
    unknown = [c for c in frame.columns if c != "cycle" and c not in KNOWN_COLUMNS]
    if "cycle" not in frame.columns:
        raise CalibrationError(f"{name}: needs a 'cycle' column (got {', '.join(frame.columns)})")
    if unknown:
        raise CalibrationError(
            f"{name}: unknown columns {', '.join(unknown)}; "
            f"known: cycle, {', '.join(KNOWN_COLUMNS)}"
        )
    if not [c for c in KNOWN_COLUMNS if c in frame.columns]:
        raise CalibrationError(f"{name}: needs at least one of {', '.join(KNOWN_COLUMNS)}")
    out = frame.apply(pd.to_numeric, errors="coerce")
    bad = out["cycle"].isna() | (out["cycle"] < 1) | (out["cycle"] % 1 != 0)
    if bad.any():
        raise CalibrationError(f"{name}: cycle must be whole numbers ≥ 1")
    out["cycle"] = out["cycle"].astype(int)
    if out["cycle"].duplicated().any():
        raise CalibrationError(f"{name}: a cycle appears twice")
    if out.drop(columns="cycle").notna().sum().sum() == 0:
        raise CalibrationError(f"{name}: no observed values")
    return out.sort_values("cycle", ignore_index=True)


@dataclass
class _Sim:
    validity: np.ndarray  # (cycles,) mean over trials
    fitness: np.ndarray  # (cycles,) mean over trials of the mean fitness of valid candidates
    novelty: np.ndarray  # (cycles,)
    novel: np.ndarray  # (cycles,) mean count of valid candidates with novelty ≥ NOVEL_CUT
    valid_fit: list[np.ndarray]  # per cycle: fitness of every valid candidate, all trials
    metrics: pd.DataFrame  # `simulate`'s per-(trial, cycle) metrics

    @property
    def diversity(self) -> np.ndarray:
        return self.metrics.groupby("cycle")["diversity"].mean().to_numpy()

    def share_above(self, cut: float) -> np.ndarray:
        return np.array([(f > cut).mean() if f.size else np.nan for f in self.valid_fit])


def _simulate(config: Config) -> _Sim:
    """`loop.simulate`, keeping per-candidate values the per-trial metrics average away."""
    cycles: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    result = simulate(config, on_candidates=lambda c, v, f, n: cycles.append((v, f, n)))
    valid = np.stack([v for v, _, _ in cycles])  # (cycles, trials, n)
    fit = np.stack([f for _, f, _ in cycles])
    nov = np.stack([x for _, _, x in cycles])
    with np.errstate(invalid="ignore", divide="ignore"):
        per_trial = np.where(valid, fit, 0).sum(axis=2) / valid.sum(axis=2)
    return _Sim(
        validity=valid.mean(axis=(1, 2)),
        fitness=_nanmean_rows(per_trial),
        novelty=nov.mean(axis=(1, 2)),
        novel=(valid & (nov >= NOVEL_CUT)).sum(axis=2).mean(axis=1),
        valid_fit=[f[v] for f, v in zip(fit, valid)],
        metrics=result.metrics,
    )


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Row means ignoring NaN; NaN for a row with no finite value (no warning)."""
    x = np.where(np.isfinite(x), x, np.nan)
    n = np.isfinite(x).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.nansum(x, axis=1) / n, np.nan)


def _observe(sim: _Sim, obs: pd.DataFrame) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Map a simulation onto the observed columns, fitting each column's nuisance map."""
    idx = obs["cycle"].to_numpy() - 1
    out: dict[str, np.ndarray] = {}
    maps: dict[str, float] = {}
    if "validity" in obs:
        out["validity"] = sim.validity
    if "mean_accuracy" in obs:  # accuracy ≈ a + b · fitness, (a, b) by least squares
        y = obs["mean_accuracy"].to_numpy()
        m = obs["mean_accuracy"].notna().to_numpy() & np.isfinite(sim.fitness[idx])
        x = sim.fitness[idx]
        a, b = float(np.nanmean(y)) if m.any() else 0.0, 0.0
        if m.sum() >= 2 and np.ptp(x[m]) > 0:
            b, a = np.polyfit(x[m], y[m], 1)
        maps.update(accuracy_intercept=float(a), accuracy_slope=float(b))
        out["mean_accuracy"] = a + b * sim.fitness
    if "share_above_40" in obs:
        b = maps.get("accuracy_slope", 0.0)
        cut = (ACCURACY_CUT - maps["accuracy_intercept"]) / b if b > 0 else FITNESS_CUT
        maps["fitness_cut"] = float(cut)
        out["share_above_40"] = sim.share_above(cut)
    if "novel_admitted" in obs:  # admitted ≈ c · (valid candidates with novelty ≥ NOVEL_CUT)
        y, m = obs["novel_admitted"].to_numpy(), obs["novel_admitted"].notna().to_numpy()
        x = sim.novel[idx]
        denom = float((x[m] ** 2).sum())
        c = max(float((x[m] * y[m]).sum()) / denom, 0.0) if denom > 0 else 1.0
        maps["novel_scale"] = c
        out["novel_admitted"] = c * sim.novel
    for col in DIRECT:
        if col in obs:
            out[col] = getattr(sim, col)
    for col, metric in SCALED.items():  # observed ≈ c · simulated, c ≥ 0 by least squares
        if col in obs:
            y, m = obs[col].to_numpy(), obs[col].notna().to_numpy()
            x = getattr(sim, metric)[idx]
            denom = float((x[m] ** 2).sum())
            maps[f"{col}_scale"] = c = max(float((x[m] * y[m]).sum()) / denom, 0) if denom else 1.0
            out[col] = c * getattr(sim, metric)
    return out, maps


def _residual_table(obs: pd.DataFrame, mapped: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = []
    for col, series in mapped.items():
        for cycle, value in zip(obs["cycle"], obs[col]):
            if pd.notna(value):
                fit = float(series[cycle - 1])
                rows.append((int(cycle), col, float(value), fit, float(value) - fit))
    return pd.DataFrame(rows, columns=["cycle", "column", "observed", "fitted", "residual"])


def free_params(generator: str, params=None) -> dict[str, tuple[float, float]]:
    """The parameters `calibrate` fits, `{key: (lo, hi)}`; raises for an unsupported generator."""
    if generator not in DEFAULT_BUDGET:
        raise CalibrationError(f"generator: {generator!r} is not one of paper, learned, drift")
    defaults = {"paper": PAPER_PARAMS, "learned": LEARNED_PARAMS, "drift": DRIFT_PARAMS}[generator]
    if params is None:
        return dict(defaults)
    if isinstance(params, Mapping):
        out = {k: (float(lo), float(hi)) for k, (lo, hi) in params.items()}
        if bad := [k for k, (lo, _) in out.items() if k in LOG_SCALE and lo <= 0]:
            raise CalibrationError(f"params: {', '.join(bad)} is fitted on a log scale: lo > 0")
        return out
    if isinstance(params, Sequence) and not isinstance(params, str):
        unknown = [p for p in params if p not in defaults]
        if unknown:
            raise CalibrationError(
                f"params: no default bounds for {', '.join(unknown)}; pass {{key: (lo, hi)}} "
                f"or choose from {', '.join(defaults)}"
            )
        return {p: defaults[p] for p in params}
    raise CalibrationError("params: expected a list of keys or a {key: (lo, hi)} mapping")


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
    use = [c for c in (columns or KNOWN_COLUMNS) if c in obs.columns]
    if columns is not None and (missing := [c for c in columns if c not in obs.columns]):
        raise CalibrationError(f"columns: {', '.join(missing)} not in the trajectory")
    obs = obs[["cycle", *use]]
    obs = obs[obs[use].notna().any(axis=1)].reset_index(drop=True)
    base = (base or Config()).with_overrides(
        {
            "generator.kind": "paper" if generator == "drift" else generator,
            "trials": trials,
            "seed": seed,
            "loop.cycles": max(int(obs["cycle"].max()), cycles or 0),
        }
        | ({"space.kind": "grounded"} if generator == "learned" else {})
    )
    keys = list(bounds)
    lo = np.array([bounds[k][0] for k in keys])
    hi = np.array([bounds[k][1] for k in keys])
    log = np.array([k in LOG_SCALE for k in keys])
    start = np.array([float(_get(base, k)) for k in keys])
    scale = {c: (scales or {}).get(c) or _spread(obs[c]) for c in use}
    objective = _Objective(base, tuple(keys), lo, hi, log, obs, scale)
    config_at = objective.config_at
    if workers is None:
        workers = default_workers() if generator == "learned" else 1
    evals = Evaluations(objective, workers, on_evaluation)  # each point once (memoized)

    def residuals(u: np.ndarray) -> np.ndarray:
        return evals(u)[0].copy()

    starts = [_to_unit(start, lo, hi, log)]
    x = _first_cycle_logit(obs, base, earliest=generator == "drift")
    if x is not None and "generator.base_logit" in keys:
        i = keys.index("generator.base_logit")  # cycle 1 is all fresh from a uniform prior:
        u1 = starts[0].copy()  # its validity is ceiling · σ(base_logit)^d, solved for base_logit
        u1[i] = np.clip((x - lo[i]) / (hi[i] - lo[i]), 0, 1)
        starts.append(u1)
    if generator == "learned" and "generator.learned.lr" in keys:
        i = keys.index("generator.learned.lr")
        u1 = starts[0].copy()
        u1[i] = _to_unit(np.array([SLOW_LR]), lo[i : i + 1], hi[i : i + 1], log[i : i + 1])[0]
        starts.append(u1)
    if (
        generator == "drift"
        and (peak := _peak_start(obs, base, keys, lo, hi, starts[-1])) is not None
    ):
        starts.append(peak)
    parallel = {"workers": evals.map} if _HAS_WORKERS else {}

    def run(u0: np.ndarray):
        return least_squares(
            residuals, u0, bounds=(0, 1), diff_step=DIFF_STEP, max_nfev=max_nfev,
            x_scale=1.0, **parallel,
        )  # fmt: skip

    try:
        r0 = residuals(starts[0])
        if workers > 1 and len(starts) > 1:  # independent starts share the pool
            with ThreadPoolExecutor(len(starts)) as threads:
                fits = list(threads.map(run, starts))
        else:
            fits = [run(u0) for u0 in starts]
        u = (fit := min(fits, key=lambda f: f.cost)).x  # the first of equals, as before
        u = u if (fit.fun**2).sum() <= (r0**2).sum() else starts[0]
        sim = evals(u)[1]  # simulated already during the fit: not run again
    finally:
        evals.close()
    config = config_at(u)
    mapped, maps = _observe(sim, obs)
    table = _residual_table(obs, mapped)
    stderr, interval = _bootstrap(fit.jac, fit.fun, u, lo, hi, log, keys, n_boot, seed)
    fitted = pd.DataFrame({"cycle": np.arange(1, len(sim.validity) + 1), **mapped})
    fitted["fitness"], fitted["novelty"] = sim.fitness, sim.novelty
    return Calibration(
        params={k: float(_get(config, k)) for k in keys},
        stderr=stderr,
        interval=interval,
        residuals=table,
        fitted=fitted,
        rmse={c: float(np.sqrt((g["residual"] ** 2).mean())) for c, g in table.groupby("column")},
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
        },
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

    def config_at(self, u: np.ndarray) -> Config:
        values = _from_unit(u, self.lo, self.hi, self.log)
        return self.base.with_overrides({k: float(v) for k, v in zip(self.keys, values)})

    def __call__(self, u: np.ndarray) -> tuple[np.ndarray, _Sim]:
        sim = _simulate(self.config_at(u))
        table = _residual_table(self.obs, _observe(sim, self.obs)[0])
        r = table["residual"].to_numpy() / table["column"].map(self.scale).to_numpy()
        return np.nan_to_num(r, nan=1.0), sim  # a cycle with nothing valid anywhere: a unit miss


def _peak_start(
    obs: pd.DataFrame, base: Config, keys: list[str], lo, hi, u: np.ndarray
) -> np.ndarray | None:
    """Drift's third start, by matching the model's per-token log-odds to the observed rise and
    fall: the bonus completes at the observed validity peak p (one full round per cycle), the
    drift is the log-odds lost per cycle from p to the last cycle, bonus_max and base_logit
    give the rise from the first observed cycle to p. A start only (each valid rate read as
    ceiling · σ(L)^d, as if every token were written); None without an interior peak."""
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
    values = {
        "generator.bonus_rate": 1 / (peak - 1),
        "generator.drift": drift if drift > 0 else DRIFT_START,
        "generator.bonus_max": (rise + max(drift, 0)) * (peak - 1),
        "generator.base_logit": logit[first] - rise * (first - 1),
    }
    out = u.copy()
    for key, value in values.items():
        if key in keys:
            i = keys.index(key)
            out[i] = np.clip((value - lo[i]) / (hi[i] - lo[i]), 0, 1)
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


def _from_unit(u: np.ndarray, lo: np.ndarray, hi: np.ndarray, log: np.ndarray) -> np.ndarray:
    """Optimizer coordinates in [0, 1] → parameter values (log-linear where `log`)."""
    u = np.clip(u, 0, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        geo = np.exp(np.log(np.where(log, lo, 1)) + u * np.log(np.where(log, hi / lo, 1)))
    return np.where(log, geo, lo + u * (hi - lo))


def _to_unit(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, log: np.ndarray) -> np.ndarray:
    """Parameter values → optimizer coordinates in [0, 1] (the inverse of `_from_unit`)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        geo = np.log(np.maximum(x, 1e-300) / np.where(log, lo, 1)) / np.log(
            np.where(log, hi / lo, 2)
        )
    return np.clip(np.where(log, geo, (x - lo) / (hi - lo)), 0, 1)


def _get(config: Config, key: str):
    node = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _spread(col: pd.Series) -> float:
    """Each column's residuals are divided by its observed spread, so columns weigh alike."""
    s = float(col.dropna().std()) if col.notna().sum() > 1 else 0.0
    return s if s > 0 else max(abs(float(col.dropna().mean())), 1.0)


def _bootstrap(jac, res, u, lo, hi, log, keys, n_boot, seed):
    """One-step residual bootstrap: resample the fit's residuals, take the linearized
    (Gauss–Newton) step they imply from the optimum, and read the spread of the steps.
    A parameter the data do not move (a zero Jacobian column) gets NaN and its whole range."""
    rng = np.random.default_rng(seed)
    centered = res - res.mean()
    live = np.linalg.norm(jac, axis=0) > 1e-9
    draws = np.tile(u, (max(n_boot, 0), 1))
    for b in range(n_boot):
        r = rng.choice(centered, size=len(centered), replace=True)
        if live.any():
            step = np.linalg.lstsq(jac[:, live], -r, rcond=None)[0]
            draws[b, live] = np.clip(u[live] + step, 0, 1)
    values = _from_unit(draws, lo, hi, log)
    stderr, interval = {}, {}
    for i, k in enumerate(keys):
        if not live[i] or n_boot < 2:
            stderr[k], interval[k] = float("nan"), (float(lo[i]), float(hi[i]))
            continue
        stderr[k] = float(values[:, i].std(ddof=1))
        q = np.quantile(values[:, i], [0.05, 0.95])
        interval[k] = (float(q[0]), float(q[1]))
    return stderr, interval
