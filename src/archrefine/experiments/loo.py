"""Leave-one-cycle-out check of a calibration: does the fit predict a cycle it did not see?

With five observed valid rates, an in-sample RMSE says little: four free parameters can bend
a curve through almost any five points. Refitting without each observed cycle (all its columns)
and predicting that cycle's values from the refit measures what the mechanism *predicts*, as
cross-validation does; a model that only fits noise predicts the held-out cycle badly. A run
mean (`calibrate`'s `run_means`: a published mean over every cycle) stays in every refit, as it
has no cycle to leave out; it includes the left-out cycle with weight 1/cycles, which
docs/rise-and-fall.md measures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from archrefine.experiments.calibrate import (
    KNOWN_COLUMNS,
    Calibration,
    CalibrationError,
    calibrate,
    check_trajectory,
    free_params,
)
from archrefine.experiments.fitting import SCALED, spread

LOO_COLUMNS = ["cycle", "column", "observed", "predicted", "residual"]
#: coefficients `fitting.observe` fits per observed column besides the generator's parameters
MAP_COEFFICIENTS = {"mean_accuracy": 2, "novel_admitted": 1} | dict.fromkeys(SCALED, 1)


def observed_cycles(
    trajectory: pd.DataFrame, columns: Sequence[str] | None
) -> tuple[pd.DataFrame, list[str]]:
    """The cycles with at least one observed value among `columns` (default: every known column
    the trajectory has), and those columns; at least 3 such cycles or `CalibrationError`."""
    obs = check_trajectory(trajectory)
    use = [c for c in (columns or KNOWN_COLUMNS) if c in obs.columns]
    obs = obs[["cycle", *use]]
    obs = obs[obs[use].notna().any(axis=1)].reset_index(drop=True)
    if len(obs) < 3:
        raise CalibrationError(f"leave-one-out needs at least 3 observed cycles, got {len(obs)}")
    return obs, use


def thin_fold(
    obs: pd.DataFrame,
    use: Sequence[str],
    free: Callable[[list[str]], int],
    run_means: Mapping[str, float] | None = None,
) -> tuple[int, int, int] | None:
    """The first fold whose refit keeps no more observed values than free parameters — `free`
    counts them from the columns the refit still observes; a run mean of one of those counts
    as a value — as (cycle left out, values, free); None where every fold keeps more."""
    for cycle in obs["cycle"]:
        train = obs[obs["cycle"] != cycle]
        keep = [c for c in use if train[c].notna().any()]
        values = int(train[keep].notna().sum().sum()) + len(set(run_means or ()) & set(keep))
        if values <= (n := free(keep)):
            return int(cycle), values, n
    return None


def check_values(
    trajectory: pd.DataFrame,
    *,
    generator: str = "paper",
    columns: Sequence[str] | None = None,
    params: Any = None,
    run_means: Mapping[str, float] | None = None,
    name: str = "trajectory",
) -> None:
    """Raise `CalibrationError` when the fit would have fewer observed values (each run mean
    counts as one) than free parameters (the generator's and the observation maps'): such a
    fit is not determined, and its standard errors mean nothing. Cheap: call it before the fit.
    (`calibrate` itself does not check: a forecast fits its first cycles under a prior.)"""
    obs = check_trajectory(trajectory, name=name)
    means = set(run_means or ())
    keep = [c for c in (columns or KNOWN_COLUMNS) if c in obs.columns]
    keep = [c for c in keep if obs[c].notna().any() or c in means]
    values = int(obs[keep].notna().sum().sum()) + len(means & set(keep))
    n_model = len(free_params(generator, params))
    n_maps = sum(MAP_COEFFICIENTS.get(c, 0) for c in keep)
    if values < n_model + n_maps:
        maps = f" and {n_maps} of the observation maps" if n_maps else ""
        raise CalibrationError(
            f"{name}: {values} observed value{'s' * (values != 1)} for {n_model + n_maps} free "
            f"parameters ({n_model} of the {generator} generator{maps}): a fit needs at least "
            "as many values as parameters; observe more cycles or columns, or fit fewer "
            "parameters (--params)"
        )


def check_folds(
    trajectory: pd.DataFrame,
    *,
    generator: str = "paper",
    columns: Sequence[str] | None = None,
    params: Any = None,
    run_means: Mapping[str, float] | None = None,
) -> None:
    """Raise `CalibrationError` unless every refit has fewer free parameters (the generator's
    and the observation maps') than observed values: with as many, a refit can pass through
    every value it sees and its prediction of the left-out cycle is unconstrained. Cheap: call
    it before the fit."""
    obs, use = observed_cycles(trajectory, columns)
    n_model = len(free_params(generator, params))
    thin = thin_fold(
        obs, use, lambda keep: n_model + sum(MAP_COEFFICIENTS.get(c, 0) for c in keep), run_means
    )
    if thin is not None:
        cycle, values, free = thin
        raise CalibrationError(
            f"leave-one-out: without cycle {cycle}, {values} observed values are left for "
            f"{free} free parameters; fit more columns or fewer parameters"
        )


def leave_one_out(
    trajectory: pd.DataFrame,
    *,
    columns: Sequence[str] | None = None,
    on_fold: Callable[[int, int], None] | None = None,
    **kwargs: Any,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Refit `calibrate(trajectory, **kwargs)` once per observed cycle, leaving it out.

    Every refit simulates the full run length and weighs each column by the spread of the
    *whole* trajectory, so folds differ only in the cycle they lack; the held-out values are
    predicted with the refit's own observation maps (`check_folds` first). Returns the
    per-value table (cycle, column, observed, predicted, residual = observed − predicted) and
    the RMSE per column.
    `on_fold(done, total)` is called after each refit.
    """
    obs, use = observed_cycles(trajectory, columns)
    means = dict(kwargs.pop("run_means", None) or {})
    generator, params = kwargs.get("generator", "paper"), kwargs.get("params")
    check_folds(obs, generator=generator, params=params, run_means=means)
    scales = {c: spread(obs[c]) for c in use} | dict(kwargs.pop("scales", None) or {})
    kwargs.setdefault("n_boot", 0)
    kwargs["cycles"] = max(int(obs["cycle"].max()), kwargs.get("cycles") or 0)
    rows = []
    for done, cycle in enumerate(obs["cycle"], start=1):
        train = obs[obs["cycle"] != cycle]
        keep = [c for c in use if train[c].notna().any()]
        fold_means = {c: v for c, v in means.items() if c in keep}  # the run's: no cycle to drop
        fit: Calibration = calibrate(
            train, columns=keep, scales=scales, run_means=fold_means, **kwargs
        )
        held = obs.loc[obs["cycle"] == cycle].iloc[0]
        for col in keep:
            if pd.notna(held[col]):
                predicted = float(fit.fitted[col].iloc[cycle - 1])
                rows.append((int(cycle), col, float(held[col]), predicted, held[col] - predicted))
        if on_fold is not None:
            on_fold(done, len(obs))
    table = pd.DataFrame(rows, columns=LOO_COLUMNS)
    rmse = {
        c: float(np.sqrt(np.nanmean(g["residual"].to_numpy(dtype=float) ** 2)))
        for c, g in table.groupby("column", sort=False)
    }
    return table, rmse


def with_loo(cal: Calibration, trajectory: pd.DataFrame, **kwargs: Any) -> Calibration:
    """`cal` with its leave-one-out table and RMSE (written to params.json as `loo_rmse`)."""
    cal.loo, cal.loo_rmse = leave_one_out(trajectory, **kwargs)
    return cal
