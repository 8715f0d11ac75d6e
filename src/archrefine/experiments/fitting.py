"""Fitting primitives shared by calibrate, forecast and leave-one-out: simulate, map, compare.

Their own module so that `calibrate.py` (the command's orchestration: starts, optimizer, result)
and `forecast.py`/`loo.py` use one public set of helpers instead of each other's private names.
A simulation keeps the per-candidate values (`simulate_candidates`); `observe` maps it onto an
observed trajectory's columns, fitting each column's nuisance map; `residual_table` compares;
`from_unit`/`to_unit` move between parameter values and the optimizer's [0, 1] box.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from archrefine.core.config import Config
from archrefine.sim.loop import simulate

COLUMNS = ("validity", "mean_accuracy", "share_above_40", "novel_admitted")
#: simulator metrics in simulator units (an `archrefine run`'s means), compared as they are
DIRECT = ("novelty", "diversity", "fitness")
#: a real loop's code novelty and diversity: compared up to a scale c ≥ 0 (fitted in closed form)
SCALED = {"code_novelty": "novelty", "code_diversity": "diversity"}
KNOWN_COLUMNS = (*COLUMNS, *DIRECT, *SCALED)

ACCURACY_CUT = 0.40  # share_above_40: accuracy above 40%, mapped to fitness by the affine map
FITNESS_CUT = 0.60  # ... or this NK fitness when mean_accuracy is not observed
NOVEL_CUT = 0.80  # novel_admitted: valid candidates at least this novel (normalized Hamming)


@dataclass
class Simulated:
    """One simulation's per-cycle means, plus what the per-trial metrics average away."""

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


def simulate_candidates(config: Config) -> Simulated:
    """`loop.simulate`, keeping per-candidate values the per-trial metrics average away."""
    cycles: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    result = simulate(config, on_candidates=lambda c, v, f, n: cycles.append((v, f, n)))
    valid = np.stack([v for v, _, _ in cycles])  # (cycles, trials, n)
    fit = np.stack([f for _, f, _ in cycles])
    nov = np.stack([x for _, _, x in cycles])
    with np.errstate(invalid="ignore", divide="ignore"):
        per_trial = np.where(valid, fit, 0).sum(axis=2) / valid.sum(axis=2)
    return Simulated(
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


def observe(sim: Simulated, obs: pd.DataFrame) -> tuple[dict[str, np.ndarray], dict[str, float]]:
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


#: a run mean's column in a residual table ("validity" → "validity_run_mean"), at cycle 0
RUN_MEAN_SUFFIX = "_run_mean"


def residual_table(
    obs: pd.DataFrame, mapped: dict[str, np.ndarray], means: Mapping[str, float] | None = None
) -> pd.DataFrame:
    """One row per observed cell: cycle, column, observed, fitted, residual (observed − fitted);
    then one per run mean (`means`, `{column: observed mean over every simulated cycle}`), as
    column + `RUN_MEAN_SUFFIX` at cycle 0, fitted by the mean of the mapped curve."""
    rows = []
    for col, series in mapped.items():
        for cycle, value in zip(obs["cycle"], obs[col]):
            if pd.notna(value):
                fit = float(series[cycle - 1])
                rows.append((int(cycle), col, float(value), fit, float(value) - fit))
    for col, value in (means or {}).items():
        fit = float(np.nanmean(mapped[col])) if np.isfinite(mapped[col]).any() else np.nan
        rows.append((0, col + RUN_MEAN_SUFFIX, float(value), fit, float(value) - fit))
    return pd.DataFrame(rows, columns=["cycle", "column", "observed", "fitted", "residual"])


def residual_scales(table: pd.DataFrame, scale: Mapping[str, float]) -> np.ndarray:
    """What each row of a `residual_table` is divided by: its column's scale; a run mean weighs
    as one more observed value of its column."""
    base = table["column"].str.removesuffix(RUN_MEAN_SUFFIX)
    return base.map(scale).to_numpy(dtype=float)


def fitted_frame(sim: Simulated, mapped: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per-cycle simulated means at a fit, in observed units, with fitness and novelty beside."""
    fitted = pd.DataFrame({"cycle": np.arange(1, len(sim.validity) + 1), **mapped})
    fitted["fitness"], fitted["novelty"] = sim.fitness, sim.novelty
    return fitted


def rmse_by_column(table: pd.DataFrame) -> dict[str, float]:
    """Root-mean-square residual per observed column of a `residual_table`."""
    return {c: float(np.sqrt((g["residual"] ** 2).mean())) for c, g in table.groupby("column")}


def from_unit(u: np.ndarray, lo: np.ndarray, hi: np.ndarray, log: np.ndarray) -> np.ndarray:
    """Optimizer coordinates in [0, 1] → parameter values (log-linear where `log`)."""
    u = np.clip(u, 0, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        geo = np.exp(np.log(np.where(log, lo, 1)) + u * np.log(np.where(log, hi / lo, 1)))
    return np.where(log, geo, lo + u * (hi - lo))


def to_unit(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, log: np.ndarray) -> np.ndarray:
    """Parameter values → optimizer coordinates in [0, 1] (the inverse of `from_unit`)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        geo = np.log(np.maximum(x, 1e-300) / np.where(log, lo, 1)) / np.log(
            np.where(log, hi / lo, 2)
        )
    return np.clip(np.where(log, geo, (x - lo) / (hi - lo)), 0, 1)


def config_value(config: Config, key: str):
    """The value at a dotted config key ("generator.base_logit"), as `with_overrides` names it."""
    node = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def spread(col: pd.Series) -> float:
    """Each column's residuals are divided by its observed spread, so columns weigh alike (1
    for a column observed once, or only through its run mean)."""
    s = float(col.dropna().std()) if col.notna().sum() > 1 else 0.0
    return s if s > 0 else max(abs(float(col.dropna().mean())), 1.0) if col.notna().any() else 1.0


def bootstrap(jac, res, u, lo, hi, log, keys, n_boot, seed):
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
    values = from_unit(draws, lo, hi, log)
    stderr, interval = {}, {}
    for i, k in enumerate(keys):
        if not live[i] or n_boot < 2:
            stderr[k], interval[k] = float("nan"), (float(lo[i]), float(hi[i]))
            continue
        stderr[k] = float(values[:, i].std(ddof=1))
        q = np.quantile(values[:, i], [0.05, 0.95])
        interval[k] = (float(q[0]), float(q[1]))
    return stderr, interval
