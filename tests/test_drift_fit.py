"""Regularized drift fits (experiments/drift_fit.py) on synthetic trajectories whose answer is
known, and the drift fit of `calibrate` on data that never fall."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from archrefine.core.config import Config
from archrefine.experiments.calibrate import CalibrationError, calibrate
from archrefine.experiments.drift_fit import Variant, drift_loo, fit_drift
from archrefine.experiments.fitting import spread
from archrefine.sim.loop import simulate

CYCLES = [1, 4, 6, 9, 12]
#: learns fast (the bonus completes after five full rounds) on a short horizon
TRUTH = {"generator.bonus_rate": 0.2, "generator.bonus_max": 4.0, "generator.base_logit": 2.5}


def _observed(config: Config) -> pd.DataFrame:
    v = simulate(config).metrics.groupby("cycle")["validity"].mean().to_numpy()
    return pd.DataFrame({"cycle": CYCLES, "validity": v[np.array(CYCLES) - 1]})


def _truth(drift: float) -> Config:
    over = TRUTH | {"loop.cycles": 12, "generator.drift": drift}
    return Config(trials=6, seed=11).with_overrides(over)


@pytest.mark.slow
def test_drift_loo_recovers_a_trajectory_the_drift_model_generated():
    """Common random numbers: the refits see the very draws that made the data, so with the
    learning terms fixed at their known values and the drift free (searched from the shared
    starts), every fold recovers it and predicts its held-out cycle."""
    truth = _truth(0.5)
    obs = _observed(truth)
    assert obs["validity"].iloc[-1] < obs["validity"].max() - 0.2  # it rises and falls
    variant = Variant("drift only", TRUTH, prior_sd=None, screen=4, keep=2)
    full, table, rmse = drift_loo(
        obs, variant, columns=("validity",), trials=6, seed=11, max_nfev=6, base=truth
    )
    assert list(table["cycle"]) == CYCLES
    assert full.params["generator.drift"] == pytest.approx(0.5, abs=0.05)
    assert rmse["validity"] < 0.05


def test_drift_loo_refuses_as_many_parameters_as_points():
    obs = _observed(_truth(0.5))  # four valid rates per fold, four free parameters
    with pytest.raises(CalibrationError, match="4 free parameters for 4 observed values"):
        drift_loo(obs, Variant("all free", screen=0), columns=("validity",), trials=2)


def test_drift_loo_fits_the_run_mean_in_every_fold():
    """A run mean is one more value per fold (four valid rates and the mean: enough for four
    parameters), and a fit with the true mean matches it: the same draws made the data."""
    truth = _truth(0.5)
    obs = _observed(truth)
    mean = float(simulate(truth).metrics.groupby("cycle")["validity"].mean().mean())
    variant = Variant("drift only", TRUTH, screen=4, keep=2)
    full, table, _ = drift_loo(obs, variant, columns=("validity",), trials=6, seed=11,
                               max_nfev=6, base=truth, run_means={"validity": mean})  # fmt: skip
    assert list(table["cycle"]) == CYCLES
    assert full.params["generator.drift"] == pytest.approx(0.5, abs=0.05)
    assert abs(full.rmse["validity_run_mean"]) < 0.03
    drift_loo(
        obs,
        Variant("all free", screen=0, keep=1),
        columns=("validity",),
        trials=2,
        max_nfev=1,
        run_means={"validity": mean},
    )  # fmt: skip  (five values: accepted)


@pytest.mark.parametrize("fit", ["calibrate", "map"])
def test_a_monotone_trajectory_gets_no_invented_fall(fit):
    """Data from the paper model without drift rise and then stay: neither calibrate's drift
    fit nor the MAP fit may bend the curve down at the end."""
    truth = _truth(0.0)
    obs = _observed(truth)
    assert np.all(np.diff(obs["validity"]) > -0.03)  # the data never fall
    if fit == "calibrate":
        cal = calibrate(obs, generator="drift", base=truth, trials=6, seed=11, n_boot=0,
                        max_nfev=4)  # fmt: skip
        curve, drift = cal.fitted["validity"].to_numpy(), cal.params["generator.drift"]
    else:
        variant = Variant("map", prior_sd=0.2, screen=4, keep=1)
        base = truth.with_overrides({"generator.kind": "paper"})
        full = fit_drift(obs, variant, base, {"validity": spread(obs["validity"])}, 4)
        curve, drift = full.fitted["validity"].to_numpy(), full.params["generator.drift"]
    assert curve[-1] > curve.max() - 0.05
    assert drift < 0.1


def test_leave_one_out_checks_its_folds_before_fitting():
    """Khalid et al.: four valid rates per fold cannot carry drift's four parameters; with mean
    accuracy (three or four values and a two-coefficient map per fold) they can."""
    from archrefine.experiments.loo import check_folds, leave_one_out
    from archrefine.experiments.trajectory import KHALID, load_trajectory

    obs = load_trajectory(KHALID)
    with pytest.raises(CalibrationError, match="without cycle 1, 4 observed values .* 4 free"):
        leave_one_out(obs, generator="drift", columns=["validity"], trials=1, max_nfev=1)
    check_folds(obs, generator="drift", columns=["validity", "mean_accuracy"])
    two = {"generator.bonus_rate": (0.01, 0.5), "generator.drift": (0.0, 1.0)}
    check_folds(obs, generator="drift", columns=["validity"], params=two)
