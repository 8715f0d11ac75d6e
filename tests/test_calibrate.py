"""Calibration: the shipped data, input checks, parameter recovery, and the written files."""

import json

import numpy as np
import pandas as pd
import pytest

from archrefine.core.config import Config
from archrefine.experiments.calibrate import (
    KHALID,
    CalibrationError,
    calibrate,
    load_trajectory,
)
from archrefine.experiments.calibrate_report import write_calibration
from archrefine.experiments.fitting import simulate_candidates
from archrefine.sim.loop import simulate

#: a tiny learned model and a short run, so a whole fit takes seconds (test_evaluations.py too)
TINY_LEARNED = {
    "generator.learned.d_model": 16,
    "generator.learned.heads": 2,
    "generator.learned.layers": 1,
    "generator.learned.steps": 2,
    "generator.learned.batch": 8,
    "generator.learned.pretrain_steps": 20,
    "loop.population": 20,
    "loop.top_k": 5,
}


def test_shipped_khalid_trajectory_has_the_published_numbers():
    t = load_trajectory(KHALID).set_index("cycle")
    assert list(t.index) == list(range(1, 23))
    assert t.loc[[1, 10, 14, 18, 22], "validity"].tolist() == [0.44, 0.538, 0.745, 0.591, 0.418]
    assert t.loc[[1, 10, 18, 22], "mean_accuracy"].tolist() == [0.2806, 0.377, 0.5099, 0.4948]
    assert t.loc[[1, 10, 18, 22], "share_above_40"].tolist() == [0.0204, 0.3804, 0.9681, 0.9286]
    assert t.loc[[1, 10, 18, 22], "novel_admitted"].tolist() == [1, 18, 38, 30]
    assert t["validity"].notna().sum() == 5 and t["mean_accuracy"].notna().sum() == 4
    assert "2601.02997" in KHALID.read_text().splitlines()[0]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("validity\n0.5\n", "needs a 'cycle' column"),
        ("cycle,validity,accuracy,foo\n1,0.5,0.3,1\n", "unknown columns accuracy, foo"),
        ("cycle\n1\n", "needs at least one of"),
        ("cycle,validity\n0,0.5\n", "cycle must be whole numbers"),
    ],
)
def test_a_bad_trajectory_fails_with_one_line(tmp_path, text, needle):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=needle) as err:
        load_trajectory(path)
    assert "\n" not in str(err.value)
    with pytest.raises(CalibrationError, match="no such file"):
        load_trajectory(tmp_path / "missing.csv")


def test_recording_run_is_the_same_run_as_simulate():
    cfg = Config().with_overrides({"trials": 4, "loop.cycles": 5})
    sim, ref = simulate_candidates(cfg), simulate(cfg).mean()
    np.testing.assert_allclose(sim.validity, ref["validity"])
    np.testing.assert_allclose(sim.fitness, ref["fitness"])


def test_learned_generator_calibrates_on_the_grounded_space():
    pytest.importorskip("torch")
    t = pd.DataFrame({"cycle": [1, 2, 3], "validity": [0.4, 0.6, 0.5]})
    cal = calibrate(
        t,
        generator="learned",
        params=["generator.learned.lr", "generator.learned.target_validity"],
        base=Config().with_overrides(TINY_LEARNED),
        trials=1,
        n_boot=3,
        max_nfev=2,
    )
    assert cal.config.space.kind == "grounded" and cal.config.generator.kind == "learned"
    assert set(cal.params) == {"generator.learned.lr", "generator.learned.target_validity"}
    assert all(np.isfinite(v) for v in cal.params.values())
    assert 1e-5 <= cal.params["generator.learned.lr"] <= 3e-2
    assert np.isfinite(cal.rmse["validity"]) and cal.info["loss"] <= cal.info["loss_start"]
    with pytest.raises(ValueError, match="no default bounds for generator.base_logit"):
        calibrate(t, generator="learned", params=["generator.base_logit"])
    with pytest.raises(ValueError, match="log scale"):
        calibrate(t, generator="learned", params={"generator.learned.lr": (0.0, 1.0)})


def test_calibration_recovers_known_parameters():
    truth = {"generator.base_logit": 2.0, "generator.bonus_rate": 0.2}
    cfg = Config().with_overrides({"trials": 20, "seed": 3, "loop.cycles": 12, **truth})
    sim = simulate_candidates(cfg)
    cycles = np.arange(1, 13)
    traj = pd.DataFrame({"cycle": cycles, "validity": sim.validity})
    traj.loc[traj.cycle % 3 == 2, "validity"] = np.nan  # unobserved cycles are ignored
    cal = calibrate(
        traj,
        params={"generator.base_logit": (0.0, 4.0), "generator.bonus_rate": (0.01, 0.5)},
        trials=20,
        seed=3,
        n_boot=10,
        max_nfev=10,
    )
    assert cal.info["loss"] < 0.1 * cal.info["loss_start"]
    assert abs(cal.params["generator.base_logit"] - 2.0) < 0.3
    assert abs(cal.params["generator.bonus_rate"] - 0.2) < 0.08
    assert cal.rmse["validity"] < 0.05
    assert cal.config.generator.base_logit == cal.params["generator.base_logit"]
    assert set(cal.residuals["cycle"]) == set(cycles[cycles % 3 != 2])
    for key, (lo, hi) in cal.interval.items():
        assert lo <= hi and np.isfinite(cal.stderr[key])


def test_write_calibration_writes_every_file(tmp_path):
    t = load_trajectory(KHALID)
    cal = calibrate(
        t,
        params=["generator.base_logit"],
        columns=["validity", "novel_admitted", "share_above_40"],
        trials=4,
        n_boot=3,
        max_nfev=2,
    )
    files = write_calibration(tmp_path, cal)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)
    params = json.loads((tmp_path / "params.json").read_text())
    assert set(params["params"]) == {"generator.base_logit"}
    assert set(params["rmse"]) == {"validity", "novel_admitted", "share_above_40"}
    assert params["maps"]["fitness_cut"] == 0.6  # no accuracy observed: the fixed cut
    res = pd.read_csv(tmp_path / "residuals.csv")
    assert list(res.columns) == ["cycle", "column", "observed", "fitted", "residual"]
    assert len(res) == 5 + 4 + 4
    assert "base_logit" in (tmp_path / "fitted.toml").read_text()
    assert (tmp_path / "overlay.png").stat().st_size > 5000
