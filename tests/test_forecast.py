"""Forecast: a run the simulator made at known parameters is forecast from its first cycles;
inputs (run and loop directories, CSVs) and the one-line errors for impossible requests."""

import json

import numpy as np
import pandas as pd
import pytest

from archrefine.core.config import Config
from archrefine.core.store import write_parquet
from archrefine.experiments import forecast as fc
from archrefine.experiments import forecast_fit, forecast_io
from archrefine.sim.loop import simulate

#: the run's own parameters, away from the defaults the fit starts from and its prior is centred
#: on (the defaults, at this base_logit, end 5 pp higher in validity and keep 5 pp less diversity)
TRUTH = {"generator.base_logit": 2.0, "generator.bonus_max": 6.0, "generator.prior_rate": 0.4}
SMALL = {"trials": 20, "draws": 6, "screen": 4, "max_nfev": 10}  # a test-sized budget


def _run_dir(path, config: Config, cycles: int | None = None):
    """A directory like `archrefine run` writes, optionally cut short after `cycles`."""
    path.mkdir()
    metrics = simulate(config).metrics
    if cycles is not None:
        metrics = metrics[metrics["cycle"] <= cycles]
    write_parquet(path / "metrics.parquet", metrics)
    (path / "config.toml").write_text(config.to_toml())
    return path


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    config = Config(trials=100, seed=3).with_overrides(TRUTH | {"loop.cycles": 16})
    run = _run_dir(tmp_path_factory.mktemp("known") / "run", config)
    obs = forecast_io.load_observed(run)
    return obs, fc.forecast(obs, fit_cycles=8, seed=1, **SMALL)


def test_forecast_of_a_simulated_run_recovers_its_future(known):
    obs, result = known
    s, t = result.summary, result.table
    assert obs.source == "run" and obs.trials == 100 and obs.cycles == 16
    assert abs(s["final_validity"] - s["observed_final_validity"]) <= 0.045
    assert abs(s["diversity_kept"] - s["observed_diversity_kept"]) <= 0.02
    assert s["final_validity_lo"] <= s["observed_final_validity"] <= s["final_validity_hi"]
    later = t[~t["fitted"]]
    assert len(later) == 8
    seen = later["observed_validity"]
    inside = (seen >= later["validity_lo"]) & (seen <= later["validity_hi"])
    assert inside.mean() >= 0.6
    assert (t["validity_lo"] <= t["validity_hi"]).all()
    # the fit started from the defaults, not from the run's own config (which holds TRUTH)
    assert result.info["parameter_sets"][0] != {k: v for k, v in TRUTH.items()}


def test_forecast_files_hold_every_cycle_with_bands(known, tmp_path):
    _, result = known
    names = forecast_io.write_forecast(tmp_path, result)
    assert sorted(names) == ["fitted.toml", "forecast.json", "forecast.png"]
    data = json.loads((tmp_path / "forecast.json").read_text())
    assert [c["cycle"] for c in data["cycles"]] == list(range(1, 17))
    for key in ("validity", "novelty", "diversity", "fitness"):
        assert {key, f"{key}_lo", f"{key}_hi"} <= data["cycles"][-1].keys()
    assert data["final_validity"] == pytest.approx(data["cycles"][-1]["validity"])
    first = data["cycles"][0]["observed_diversity"]
    assert data["diversity_kept"] == pytest.approx(data["cycles"][-1]["diversity"] / first)
    assert (tmp_path / "forecast.png").read_bytes()[:4] == b"\x89PNG"
    assert "[generator]" in (tmp_path / "fitted.toml").read_text()


def test_a_csv_with_validity_and_accuracy_only(tmp_path):
    config = Config(trials=30, seed=4).with_overrides(TRUTH | {"loop.cycles": 14})
    m = simulate(config).mean()
    csv = pd.DataFrame(
        {"cycle": m.index, "validity": m["validity"], "mean_accuracy": 0.1 + 0.5 * m["fitness"]}
    )
    csv.loc[csv["cycle"] > 7, ["validity", "mean_accuracy"]] = np.nan  # the future: unknown
    path = tmp_path / "t.csv"
    csv.to_csv(path, index=False)
    obs = forecast_io.load_observed(path)
    assert obs.source == "csv" and obs.cycles == 14 and obs.trials == 1
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(fc.DRAW_BUDGET, "paper", (3, 0, 10))
        result = fc.forecast(obs, fit_cycles=7, **SMALL)
    t = result.table
    assert {"mean_accuracy", "mean_accuracy_lo", "mean_accuracy_hi"} <= set(t.columns)
    assert result.info["first_cycle_diversity"] == "simulated"
    lo, hi = result.summary["final_validity_lo"], result.summary["final_validity_hi"]
    assert lo <= m["validity"].iloc[-1] <= hi  # one trial's spread: a wide band holds it
    assert "observed_final_validity" not in result.summary


def test_loop_directory_with_fewer_cycles_than_fitted_is_one_line(tmp_path):
    loop = tmp_path / "loop"
    loop.mkdir()
    frame = pd.DataFrame(
        {"trial": 0, "cycle": [1, 2, 3, 4], "validity": [0.5, 0.6, 0.7, 0.7],
         "novelty": [0.6, 0.5, 0.4, 0.4], "diversity": [0.7, 0.6, 0.5, 0.5],
         "fitness": [0.3, 0.4, 0.5, 0.5]}
    )  # fmt: skip
    write_parquet(loop / "metrics.parquet", frame)
    (loop / "config.toml").write_text('seed = 0\n[loop]\ncycles = 22\npopulation = 20\n'
                                      'top_k = 5\n[evaluate]\nworkers = 2\n')  # fmt: skip
    obs = forecast_io.load_observed(loop)
    assert obs.source == "loop" and obs.cycles == 22 and obs.config.loop.top_k == 5
    assert "code_diversity" in obs.frame and "mean_accuracy" in obs.frame
    with pytest.raises(forecast_io.ForecastError, match="only 4 cycles recorded") as err:
        fc.check_request(obs, 6)
    assert "\n" not in str(err.value)


def _cli(args):
    from typer.testing import CliRunner

    from archrefine.cli import app

    return CliRunner().invoke(app, ["forecast", *args])


def test_cli_refuses_impossible_requests_in_one_line(tmp_path):
    run = _run_dir(tmp_path / "run", Config(trials=3, seed=0).with_overrides({"loop.cycles": 6}))
    cases = [
        ([str(run), "--fit-cycles", "6"], "nothing is left to forecast"),
        ([str(run), "--fit-cycles", "9"], "nothing is left to forecast"),
        ([str(run), "--generator", "learned"], "writes only the grounded space"),
        ([str(run), "--generator", "gpt"], "use auto or a list of paper, learned"),
        ([str(tmp_path / "nope")], "no such file or directory"),
    ]
    for args, message in cases:
        result = _cli([*args, "--out", str(tmp_path / "out")])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output
        assert result.output.strip().count("\n") == 0
        assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # nothing was started


def test_cli_writes_a_forecast(tmp_path, monkeypatch):
    monkeypatch.setitem(fc.DRAW_BUDGET, "paper", (1, 0, 10))
    monkeypatch.setitem(forecast_fit.SCREEN, "paper", 4)
    monkeypatch.setitem(forecast_fit.FIT_NFEV, "paper", 3)
    cfg = Config(trials=10, seed=2).with_overrides({"loop.cycles": 8})
    run = _run_dir(tmp_path / "run", cfg, cycles=5)  # stopped after cycle 5 of 8
    result = _cli([str(run), "--fit-cycles", "5", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "forecast.json").read_text())
    assert len(data["cycles"]) == 8 and data["generator"] == "paper"
    assert "observed_final_validity" not in data  # the run never got there
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "complete"


def test_cli_hindcast_shows_the_runs_own_standard_error(tmp_path, monkeypatch):
    monkeypatch.setitem(fc.DRAW_BUDGET, "paper", (1, 0, 10))
    monkeypatch.setitem(forecast_fit.SCREEN, "paper", 2)
    monkeypatch.setitem(forecast_fit.FIT_NFEV, "paper", 2)
    run = _run_dir(tmp_path / "run", Config(trials=10, seed=4).with_overrides({"loop.cycles": 7}))
    result = _cli([str(run), "--fit-cycles", "5", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "forecast.json").read_text())
    noise = forecast_io.hindcast_noise(run)
    assert data["observed_final_validity_se"] == pytest.approx(noise["final_validity"])
    assert data["observed_diversity_kept_se"] == pytest.approx(noise["diversity_kept"])
    assert f"{data['observed_final_validity']:.3f} ± " in result.output


def test_generator_choice_follows_the_space(tmp_path):
    abstract = _run_dir(tmp_path / "a", Config(trials=2).with_overrides({"loop.cycles": 4}))
    assert fc.generators_for(forecast_io.load_observed(abstract), "auto") == ["paper"]
    grounded = Config(trials=2).with_overrides({"loop.cycles": 4, "space.kind": "grounded"})
    g = forecast_io.load_observed(_run_dir(tmp_path / "g", grounded))
    assert fc.generators_for(g, "auto") == ["paper", "learned"]
    assert fc.generators_for(g, "learned,paper,learned") == ["learned", "paper"]


def test_heldout_error_prefers_the_fit_that_predicts_the_held_cycles():
    hold = pd.DataFrame({"cycle": [5, 6], "validity": [0.5, 0.6]})
    scale = pd.DataFrame({"cycle": range(1, 7), "validity": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]})

    class Fit:
        def __init__(self, values):
            self.fitted = pd.DataFrame({"cycle": range(1, 7), "validity": values})

    good = forecast_fit.heldout_error(Fit([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), hold, scale)
    bad = forecast_fit.heldout_error(Fit([0.1, 0.2, 0.3, 0.4, 0.4, 0.4]), hold, scale)
    assert good == 0 and bad > 0.5


def test_map_fit_moves_what_the_cycles_identify_and_keeps_the_prior_elsewhere():
    """Cycle-1 validity pins base_logit (a run far from the default 1.34 is recovered); four
    cycles of a few percent validity say little about the bonus's ceiling, which stays near
    the prior's centre with nearly the prior's width."""
    truth = Config(trials=100, seed=5).with_overrides(
        {"generator.base_logit": 2.4, "loop.cycles": 4}
    )
    frame = simulate(truth).mean().reset_index()[["cycle", "validity", "diversity"]]
    base = forecast_fit.start_config(truth, "paper")
    cal, cov = forecast_fit.map_fit(frame, [base], 4, 0, 30, 10, lambda _m: None, {})
    keys = list(forecast_fit.FREE["paper"])
    assert abs(cal.params["generator.base_logit"] - 2.4) < 0.4
    assert abs(cal.params["generator.bonus_max"] - 8.0) < 1.0  # the default: the prior holds it
    sd = np.sqrt(np.diag(cov)) / forecast_fit.PRIOR_SD  # posterior ÷ prior width
    assert sd[keys.index("generator.base_logit")] < 0.3
    assert sd[keys.index("generator.bonus_max")] > 0.6
    draws = forecast_fit.posterior_draws(cal, cov, 50, np.random.default_rng(0))
    spread = np.std([d["generator.bonus_max"] for d in draws])
    assert 0.8 < spread < 3.0  # ≈ the prior's 2 (0.2 of the 0–10 range), clipped at the box


def test_conformal_factor_on_a_known_residual_distribution():
    """Errors N(0, 1) against a band of ±1: the 80% factor is the normal's 90th percentile
    (1.2816), and the widened band holds about 80% of fresh errors."""
    rng = np.random.default_rng(0)
    point, lo, hi = np.zeros(20000), -np.ones(20000), np.ones(20000)
    scores = fc.conformal_scores(point, lo, hi, rng.standard_normal(20000))
    q = fc.conformal_factor(scores, 0.8)
    assert q == pytest.approx(1.2816, abs=0.04)
    new = rng.standard_normal(20000) * 0.1  # [0, 1]-clipped metrics: shrink the scale
    wlo, whi = fc.widened(point + 0.5, lo * 0.1 + 0.5, hi * 0.1 + 0.5, q)
    assert ((new + 0.5 >= wlo) & (new + 0.5 <= whi)).mean() == pytest.approx(0.8, abs=0.02)
    # the rank: the ⌈(n + 1)·0.8⌉-th smallest; too few scores for the level: no finite factor
    assert fc.conformal_factor(np.arange(1.0, 10.0), 0.8) == 8.0
    assert fc.conformal_factor(np.array([1.0, 2.0]), 0.8) == float("inf")


def test_conformal_scores_measure_each_side_of_an_asymmetric_band():
    point, lo, hi = np.array([0.5, 0.5, 0.5]), np.array([0.4] * 3), np.array([0.8] * 3)
    scores = fc.conformal_scores(point, lo, hi, np.array([0.9, 0.3, 0.65]))
    assert scores == pytest.approx([0.4 / 0.3, 0.2 / 0.1, 0.15 / 0.3])
    wlo, whi = fc.widened(point, lo, hi, 2.0)
    assert wlo == pytest.approx([0.3] * 3) and whi == pytest.approx([1.0] * 3)  # clipped at 1


def _synthetic_run(path, trials: int, cycles: int, validity, diversity) -> None:
    """A run directory whose per-(trial, cycle) values are given (arrays `(trials, cycles)`)."""
    path.mkdir()
    trial, cycle = np.meshgrid(np.arange(trials), np.arange(1, cycles + 1), indexing="ij")
    frame = pd.DataFrame({"trial": trial.ravel(), "cycle": cycle.ravel(),
                          "validity": np.ravel(validity), "novelty": 0.5,
                          "diversity": np.ravel(diversity), "fitness": 0.5})  # fmt: skip
    write_parquet(path / "metrics.parquet", frame)
    (path / "config.toml").write_text(Config(trials=trials).with_overrides(
        {"loop.cycles": cycles}).to_toml())  # fmt: skip


def test_hindcast_noise_of_many_trials_is_their_standard_error(tmp_path):
    """Final validity spread by sd 0.1 over 400 trials: SE 0.005; diversity 0.8 → 0.4 ± 0.08
    per trial: diversity kept 0.5 with SE 0.1/√400."""
    rng = np.random.default_rng(0)
    trials, cycles = 400, 6
    validity = np.clip(0.6 + 0.1 * rng.standard_normal((trials, cycles)), 0, 1)
    diversity = np.full((trials, cycles), 0.8)
    diversity[:, -1] = 0.4 + 0.08 * rng.standard_normal(trials)
    _synthetic_run(tmp_path / "run", trials, cycles, validity, diversity)
    noise = forecast_io.hindcast_noise(tmp_path / "run")
    assert noise["final_validity"] == pytest.approx(0.1 / 20, rel=0.1)
    assert noise["diversity_kept"] == pytest.approx(0.1 / 20, rel=0.15)
    assert "400 trials" in noise["method"]


def test_hindcast_noise_of_one_trial_is_its_scatter_about_the_trend(tmp_path):
    """One trial: a straight rise plus white noise of sd 0.02 reads as about 0.02, whatever the
    slope; a smooth series without noise reads as nearly none."""
    rng = np.random.default_rng(1)
    cycles = 400
    rise = np.linspace(0.1, 0.9, cycles)
    for name, noise_sd in (("noisy", 0.02), ("smooth", 0.0)):
        validity = rise + noise_sd * rng.standard_normal(cycles)
        diversity = 0.8 - 0.4 * rise + noise_sd * rng.standard_normal(cycles)
        _synthetic_run(tmp_path / name, 1, cycles, validity[None], diversity[None])
        noise = forecast_io.hindcast_noise(tmp_path / name)
        assert noise["final_validity"] == pytest.approx(noise_sd, rel=0.1, abs=1e-9)
        first, last = diversity[0], diversity[-1]
        expected = last / first * np.hypot(noise_sd / last, noise_sd / first)
        assert noise["diversity_kept"] == pytest.approx(expected, rel=0.1, abs=1e-9)
        assert "one trial" in noise["method"]


def test_hindcast_noise_of_a_csv_without_diversity_has_none_for_it(tmp_path):
    csv = tmp_path / "study.csv"
    csv.write_text("cycle,validity\n1,0.40\n2,0.50\n3,0.62\n4,0.70\n5,0.80\n")
    noise = forecast_io.hindcast_noise(csv)
    assert np.isnan(noise["diversity_kept"])
    assert noise["final_validity"] == pytest.approx(
        np.sqrt(np.mean([0.02**2, 0.04**2, 0.02**2]) / 6)
    )


def test_a_hindcast_uses_nothing_of_the_cycles_it_predicts(tmp_path):
    """Two runs identical in their first 5 cycles and different afterwards (later cycles'
    values scattered across trials, so their spread and means change) get the same forecast:
    the fit, its residual scales and the band read only the fitted cycles."""
    config = Config(trials=12, seed=5).with_overrides({"loop.cycles": 9})
    metrics = simulate(config).metrics
    later = metrics["cycle"] > 5
    other = metrics.copy()
    rng = np.random.default_rng(0)
    for col in ("validity", "novelty", "diversity", "fitness"):
        other.loc[later, col] = rng.uniform(0, 1, int(later.sum()))
    made = {}
    for name, frame in (("same", metrics), ("other", other)):
        path = tmp_path / name
        path.mkdir()
        write_parquet(path / "metrics.parquet", frame)
        (path / "config.toml").write_text(config.to_toml())
        obs = forecast_io.load_observed(path)
        budget = {"trials": 8, "draws": 3, "screen": 2, "max_nfev": 3}
        made[name] = fc.forecast(obs, fit_cycles=5, seed=2, **budget)
    a, b = made["same"], made["other"]
    assert a.calibration.params == b.calibration.params
    predicted = [c for c in a.table.columns if not c.startswith("observed_")]
    pd.testing.assert_frame_equal(a.table[predicted], b.table[predicted])
    for key, value in a.summary.items():
        if not key.startswith("observed_"):
            assert b.summary[key] == value, key


def test_caveats_say_when_the_band_says_little_or_was_never_checked(known, tmp_path):
    """A final-validity band wider than half the scale, or one no development run widened,
    is said in forecast.json and on the terminal; a narrow, measured band gets no caveat."""
    import dataclasses

    _, result = known
    narrow = dataclasses.replace(
        result,
        summary=result.summary | {"final_validity_lo": 0.80, "final_validity_hi": 0.90},
        info=result.info | {"conformal_fit_cycles": 8},
    )
    assert forecast_io.caveats(narrow) == []
    assert "note:" not in forecast_io.summary_lines(narrow)
    wide = dataclasses.replace(
        narrow, summary=narrow.summary | {"final_validity_lo": 0.0, "final_validity_hi": 0.9}
    )
    (line,) = forecast_io.caveats(wide)
    assert "undetermined (80% band 0.00–0.90)" in line
    assert "--fit-cycles 10" in line  # fitted 8 of 16: the next measured length
    assert f"note: {line}" in forecast_io.summary_lines(wide)
    unmeasured = dataclasses.replace(narrow, info=narrow.info | {"conformal_fit_cycles": None})
    assert "not widened by development runs" in forecast_io.caveats(unmeasured)[0]
    forecast_io.write_forecast(tmp_path, wide)
    assert json.loads((tmp_path / "forecast.json").read_text())["caveats"] == [line]
