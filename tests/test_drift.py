"""Self-consumption drift (sim/drift.py) and the leave-one-cycle-out check (experiments/loo.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import archrefine.sim.paper as paper
from archrefine.core.config import Config
from archrefine.experiments.calibrate import CalibrationError, calibrate
from archrefine.experiments.calibrate_report import write_calibration
from archrefine.experiments.loo import leave_one_out, with_loo
from archrefine.sim.loop import simulate

#: a run that learns fast (the bonus completes after ten full rounds) on a short horizon
FAST = {"generator.bonus_rate": 0.1, "generator.bonus_max": 4.0, "generator.base_logit": 2.5}


def _validity(config: Config) -> np.ndarray:
    return simulate(config).metrics.groupby("cycle")["validity"].mean().to_numpy()


def test_drift_off_never_touches_the_mechanism(monkeypatch):
    """Off (the default) the generator runs the code it ran before drift existed: the Drift
    class is never built, the checkpoint state is unchanged, and the metrics are bit-identical
    to those of the same run with the mechanism's module made unusable."""
    config = Config(trials=6, seed=3).with_overrides({"loop.cycles": 6})
    before = simulate(config).metrics

    def refuse(*args, **kwargs):
        raise AssertionError("Drift built with generator.drift = 0")

    monkeypatch.setattr(paper, "Drift", refuse)
    after = simulate(config).metrics
    pd.testing.assert_frame_equal(before, after, check_exact=True)
    gen = paper.PaperGenerator(
        config.generator, trials=2, length=5, vocab=4, rng=np.random.default_rng(0)
    )
    assert gen.drift is None and set(gen.state()) == {"prior", "bonus"}


def test_drift_makes_validity_rise_then_fall():
    """Known case: the bonus completes by cycle 11, then only the drift moves validity, so a
    drifting run peaks inside the run and ends well below its peak, and the same run without
    drift does not fall. Cycle 1 (no generation yet) is the same draw in both."""
    base = Config(trials=20, seed=4).with_overrides(FAST)
    off = _validity(base)
    on = _validity(base.with_overrides({"generator.drift": 0.3}))
    assert on[0] == off[0]
    peak = int(np.argmax(on))
    assert 3 <= peak <= 16
    assert on[-1] < on[peak] - 0.25
    assert off[-1] > off.max() - 0.05


def test_drift_state_round_trips_through_load_state():
    config = Config(trials=3, seed=0).with_overrides({"generator.drift": 0.2})
    gen = paper.PaperGenerator(
        config.generator, trials=3, length=5, vocab=4, rng=np.random.default_rng(0)
    )
    gen.refine(np.zeros((3, 2, 5), dtype=np.int16), np.array([2, 1, 0]))
    assert gen.drift.generations.tolist() == [1.0, 0.5, 0.0]
    state = {k: np.array(v) for k, v in gen.state().items()}
    other = paper.PaperGenerator(
        config.generator, trials=3, length=5, vocab=4, rng=np.random.default_rng(1)
    )
    other.load_state(state)
    assert other.drift.generations.tolist() == [1.0, 0.5, 0.0]


def _synthetic(drift: float) -> tuple[Config, pd.DataFrame]:
    """A trajectory the drift model generates at known parameters, observed at five cycles."""
    truth = Config(trials=6, seed=11).with_overrides(
        FAST | {"loop.cycles": 12, "generator.bonus_rate": 0.2, "generator.drift": drift}
    )
    v = _validity(truth)
    cycles = [1, 4, 6, 9, 12]
    return truth, pd.DataFrame({"cycle": cycles, "validity": v[np.array(cycles) - 1]})


@pytest.mark.slow
def test_leave_one_out_is_small_when_the_model_generated_the_data(tmp_path):
    """Common random numbers: at the true parameters the model reproduces the data exactly, so
    each refit recovers them and predicts the held-out cycle; a model without the drift
    cannot, and its leave-one-out error is several times larger."""
    truth, obs = _synthetic(0.5)
    assert obs["validity"].iloc[-1] < obs["validity"].max() - 0.2  # the data rise and fall
    start = truth.with_overrides({"generator.bonus_rate": 0.15, "generator.drift": 0.3})
    common = {"generator": "drift", "base": start, "trials": 6, "seed": 11, "max_nfev": 3}
    fit = {"generator.bonus_rate": (0.05, 0.5), "generator.drift": (0.0, 1.0)}
    cal = with_loo(calibrate(obs, params=fit, n_boot=0, **common), obs, params=fit, **common)
    assert list(cal.loo["cycle"]) == [1, 4, 6, 9, 12]
    assert cal.loo_rmse["validity"] < 0.05
    _, flat = leave_one_out(obs, params={"generator.bonus_rate": (0.05, 0.5)}, **common)
    assert flat["validity"] > 3 * cal.loo_rmse["validity"]
    write_calibration(tmp_path, cal)
    saved = json.loads((tmp_path / "params.json").read_text())
    assert saved["loo_rmse"] == pytest.approx(cal.loo_rmse)
    assert len(pd.read_csv(tmp_path / "loo.csv")) == 5


def test_leave_one_out_needs_three_cycles_and_drift_is_a_generator():
    obs = pd.DataFrame({"cycle": [1, 2], "validity": [0.2, 0.3]})
    with pytest.raises(CalibrationError, match="at least 3 observed cycles"):
        leave_one_out(obs, generator="drift")
    with pytest.raises(CalibrationError, match="paper, learned, drift"):
        calibrate(obs, generator="drifting")


def test_cli_refuses_unknown_columns_in_one_line(tmp_path):
    from archrefine.experiments.calibrate import KHALID

    out = tmp_path / "c"
    args = ["calibrate", str(KHALID), "--generator", "drift", "--columns", "validity,accuracy"]
    p = subprocess.run(
        [sys.executable, "-m", "archrefine", *args, "--loo", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "accuracy" in p.stderr and not out.exists()


@pytest.mark.parametrize("growth", ["round", "set"])
def test_a_drifting_run_resumes_exactly(tmp_path, growth):
    """The drift's generation count (and, growing with the set, the set's size) is
    checkpointed: stopped after cycle 3 and resumed, the run matches an uninterrupted one bit
    for bit."""
    config = Config(trials=4, seed=2).with_overrides(
        FAST | {"loop.cycles": 6, "generator.drift": 0.3, "generator.bonus_growth": growth}
    )
    path = tmp_path / "checkpoint.bin"

    def stop(cycle: int) -> None:
        if cycle == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate(config, on_cycle=stop, checkpoint=path)
    resumed = simulate(config, checkpoint=path, resume=True).metrics
    pd.testing.assert_frame_equal(resumed, simulate(config).metrics, check_exact=True)
