"""Run means (a CSV's `all` row, `calibrate --run-means`): reading, fitting, leave-one-out."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from archrefine.core.config import Config
from archrefine.experiments.calibrate import (
    KHALID,
    CalibrationError,
    calibrate,
    parse_params,
    read_trajectory,
)
from archrefine.experiments.fitting import RUN_MEAN_SUFFIX, residual_scales, residual_table
from archrefine.experiments.loo import check_folds, leave_one_out
from archrefine.experiments.trajectory import load_trajectory
from archrefine.sim.loop import simulate


def _csv(tmp_path, text: str):
    path = tmp_path / "t.csv"
    path.write_text(text)
    return path


def test_the_shipped_csv_gives_the_published_mean_and_no_extra_cycle():
    frame, means = read_trajectory(KHALID)
    assert means == {"validity": 0.506}
    assert list(frame["cycle"]) == list(range(1, 23))
    pd.testing.assert_frame_equal(frame, load_trajectory(KHALID))


@pytest.mark.parametrize(
    "text, needle",
    [
        ("cycle,validity\n1,0.5\nall,0.4\nALL,0.3\n", "more than one row of run means"),
        ("cycle,validity\n1,0.5\nall,high\n", "run mean of validity is not a number"),
        ("cycle,validity\n1,0.5\nall,inf\n", r"validity \(run mean\) is inf; must be in \[0, 1\]"),
        ("cycle,validity\n1,0.5\nevery,0.4\n", "cycle must be whole numbers"),
        ("cycle,validity\n1,44.0\n2,53.8\n", r"validity at cycle 1 is 44; .* not a percentage"),
        ("cycle,validity\n1,0.5\nall,50.6\n", r"validity \(run mean\) is 50.6"),
        (
            "cycle,validity,novel_admitted\n1,0.5,-3\n",
            "novel_admitted at cycle 1 is -3; must be finite",
        ),
        ("cycle,validity\n1,0.5\n2,n/a?\n", r"validity at cycle 2 is not a number \('n/a\?'\)"),
        ("cycle,mean_accuracy\n1,0.3\n3,-inf\n", "mean_accuracy at cycle 3 is -inf"),
    ],
)
def test_a_bad_trajectory_value_fails_in_one_line(tmp_path, text, needle):
    with pytest.raises(CalibrationError, match=needle) as err:
        read_trajectory(_csv(tmp_path, text))
    assert "\n" not in str(err.value)


def test_a_run_mean_is_one_residual_against_the_whole_curve():
    obs = pd.DataFrame({"cycle": [1, 3], "validity": [0.2, np.nan]})
    curve = np.array([0.1, 0.2, 0.6, np.nan])  # a cycle with nothing valid is skipped
    table = residual_table(obs, {"validity": curve}, {"validity": 0.4})
    mean = table[table["column"] == "validity" + RUN_MEAN_SUFFIX].iloc[0]
    assert (mean["cycle"], mean["fitted"]) == (0, pytest.approx(0.3))
    assert mean["residual"] == pytest.approx(0.1)
    assert residual_scales(table, {"validity": 0.5}).tolist() == [0.5, 0.5]


def test_the_run_mean_alone_identifies_what_no_observed_cycle_does():
    """Known answer: the paper model at base_logit 2.5 (common random numbers); the only
    observed cycle is a fitness that hardly depends on base_logit and validity is never
    observed per cycle. With the true run mean of validity the fit recovers base_logit;
    without it, nothing moves it towards the truth."""
    truth = Config(trials=6, seed=5).with_overrides({"loop.cycles": 6, "generator.base_logit": 2.5})
    curve = simulate(truth).metrics.groupby("cycle")[["validity", "fitness"]].mean()
    obs = pd.DataFrame({"cycle": [3], "validity": [np.nan], "fitness": [curve["fitness"].iloc[2]]})
    common = {
        "params": {"generator.base_logit": (-1.0, 6.0)},
        "base": truth.with_overrides({"generator.base_logit": 1.0}),
        "trials": 6,
        "seed": 5,
        "n_boot": 0,
        "max_nfev": 15,
        "cycles": 6,
    }
    fit = calibrate(obs, run_means={"validity": float(curve["validity"].mean())}, **common)
    assert fit.params["generator.base_logit"] == pytest.approx(2.5, abs=0.3)
    assert fit.info["run_means"] == {"validity": pytest.approx(curve["validity"].mean())}
    assert abs(fit.rmse["validity" + RUN_MEAN_SUFFIX]) < 0.02
    blind = calibrate(obs, **common)
    assert abs(blind.params["generator.base_logit"] - 2.5) > 1.0
    with pytest.raises(CalibrationError, match="novelty is not a fitted column"):
        calibrate(obs, run_means={"novelty": 0.5}, **common)


def test_a_run_mean_counts_as_one_more_value_for_every_fold():
    """Drift has four free parameters: four valid rates per fold are too few, five (with the
    run mean) are enough."""
    obs = pd.DataFrame({"cycle": [1, 4, 8, 12, 16], "validity": [0.4, 0.5, 0.7, 0.6, 0.4]})
    with pytest.raises(CalibrationError, match="4 observed values are left for 4 free"):
        check_folds(obs, generator="drift")
    check_folds(obs, generator="drift", run_means={"validity": 0.5})


def test_leave_one_out_keeps_the_run_mean_in_every_refit(monkeypatch):
    import archrefine.experiments.loo as loo

    seen = []

    def fake(train, **kwargs):
        seen.append((sorted(train["cycle"]), kwargs["run_means"]))
        return calibrate(train, **kwargs)

    monkeypatch.setattr(loo, "calibrate", fake)
    obs = pd.DataFrame({"cycle": [1, 3, 5], "validity": [0.4, 0.6, 0.5]})
    kw = {"params": ["generator.base_logit"], "trials": 3, "max_nfev": 2, "cycles": 5}
    table, rmse = leave_one_out(obs, run_means={"validity": 0.5}, **kw)
    assert [m for _, m in seen] == [{"validity": 0.5}] * 3
    assert [c for c, _ in seen] == [[3, 5], [1, 5], [1, 3]]
    assert list(table["cycle"]) == [1, 3, 5] and set(rmse) == {"validity"}


def test_parse_params_names_keys_and_bounds():
    free = parse_params("generator.base_logit, generator.bonus_max=0:4", "drift-set")
    assert free == {"generator.base_logit": (-1.0, 6.0), "generator.bonus_max": (0.0, 4.0)}
    assert parse_params("generator.bonus_max", "drift-set") == {"generator.bonus_max": (0.0, 6.0)}
    for text, needle in [
        ("generator.nope", "not a config key"),
        ("generator.ceiling", "no default bounds"),
        ("generator.drift=1:0", "LO < HI"),
        ("generator.drift=a:b", "not KEY=LO:HI"),
        (",", "no parameter named"),
    ]:
        with pytest.raises(CalibrationError, match=needle):
            parse_params(text, "drift")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "archrefine", "calibrate", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_fits_the_run_mean_with_loo_and_writes_it(tmp_path):
    path = _csv(tmp_path, "cycle,validity\n1,0.45\n3,0.6\n5,0.55\n6,\nall,0.55\n")
    out = tmp_path / "c"
    p = _cli(str(path), "--run-means", "--loo", "--params", "generator.base_logit",
             "--trials", "3", "--out", str(out))  # fmt: skip
    assert p.returncode == 0, p.stderr
    saved = json.loads((out / "params.json").read_text())
    assert saved["info"]["run_means"] == {"validity": 0.55}
    assert list(saved["params"]) == ["generator.base_logit"]
    residuals = pd.read_csv(out / "residuals.csv")
    assert residuals.iloc[-1]["column"] == "validity_run_mean" and residuals.iloc[-1]["cycle"] == 0
    assert set(pd.read_csv(out / "loo.csv")["cycle"]) == {1, 3, 5}
    config = (out / "fitted.toml").read_text()
    assert "cycles = 6" in config  # the mean is over the file's cycles, the empty last one too
    assert (out / "overlay.png").stat().st_size > 0


def test_cli_refuses_run_means_a_file_lacks(tmp_path):
    path = _csv(tmp_path, "cycle,validity\n1,0.45\n3,0.6\n")
    out = tmp_path / "c"
    p = _cli(str(path), "--run-means", "--out", str(out))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "no row with cycle 'all'" in p.stderr and not out.exists()
    path = _csv(tmp_path, "cycle,validity,fitness\n1,0.45,0.5\n3,0.6,0.6\nall,0.5,\n")
    p = _cli(str(path), "--run-means", "--columns", "fitness", "--out", str(out))
    assert p.returncode == 2 and "columns not fitted" in p.stderr and not out.exists()
    p = _cli(str(path), "--trials", "0", "--out", str(out))  # checked before the directory
    assert p.returncode == 2 and "trials" in p.stderr and not out.exists()


def test_forecast_never_sees_the_run_mean():
    """A forecast fits the first cycles: a mean over the whole run would tell it the rest."""
    from archrefine.experiments.forecast_io import load_observed

    observed = load_observed(KHALID)
    assert observed.cycles == 22 and list(observed.frame["cycle"]) == list(range(1, 23))
    assert "run_means" not in observed.frame.attrs and not observed.frame.attrs
