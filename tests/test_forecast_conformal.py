"""The forecast band's calibration: the development runs are drawn wider than the prior, the
leave-one-run-out check counts what it should, and widening the band never moves the forecast."""

import numpy as np
import pytest

from archrefine.core.config import Config
from archrefine.core.store import write_parquet
from archrefine.experiments import forecast as fc
from archrefine.experiments import forecast_conformal as fcc
from archrefine.experiments import forecast_fit, forecast_io
from archrefine.sim.loop import simulate


def test_development_draw_is_wider_than_the_prior_and_inside_the_box():
    rng = np.random.default_rng(0)
    centre = forecast_fit.prior_centre("paper")
    dev = fcc.dev_draw(rng, 4000)
    prior = np.clip(centre + forecast_fit.PRIOR_SD * rng.standard_normal((4000, 5)), 0, 1)
    assert ((dev > 0) & (dev < 1)).all()  # redrawn, not clipped: no mass piled at a bound
    ratio = dev.std(axis=0) / prior.std(axis=0)
    assert (ratio > 1.25).all(), ratio  # 2× the prior's width, less what the box truncates
    far = np.abs(dev - centre) > 2 * forecast_fit.PRIOR_SD  # beyond 2 prior widths
    assert 0.15 < far.mean() < 0.45  # the prior puts ~5% there (before the box)


def test_development_runs_rotate_schedule_and_k_and_avoid_evaluation_seeds():
    runs = fcc.dev_runs(4, seed=1)
    sets = [dict(s.split("=", 1) for s in over) for _, over in runs]
    assert [s["schedule.kind"] for s in sets] == list(fcc.DEV_SCHEDULES)
    assert [int(s["loop.top_k"]) for s in sets] == [5, 10, 20, 5]
    assert all(int(s["seed"]) >= fcc.DEV_SEED for s in sets)  # never the evaluation's 11–21
    for _, over in runs:  # each is a valid config, whose run becomes valid at all
        config = Config(trials=20).with_overrides(over)
        assert simulate(config).mean()["validity"].iloc[-1] >= fcc.LIVE


def _band(x: float) -> tuple[np.ndarray, ...]:
    """A one-cycle band 0.5 ± 0.1 and a truth whose score is `x` (0.5 + 0.1·x)."""
    return tuple(np.array([v]) for v in (0.5, 0.4, 0.6, 0.5 + 0.1 * x))


def test_leave_one_run_out_on_a_known_case():
    """Five runs of one score each (1..5), level 0.5: leaving out 1, 2 or 3 the others' factor
    is 4 (the 3rd smallest of four), leaving out 4 or 5 it is 3; so 3 of 5 are held, and the
    widened bands are 0.8, 0.8, 0.8, 0.6, 0.6 wide."""
    cv = fcc.leave_one_run_out([_band(x) for x in (1, 2, 3, 4, 5)], 0.5)
    assert cv["cycles"] == pytest.approx(0.6) and cv["final"] == pytest.approx(0.6)
    assert cv["width"] == pytest.approx(0.72)


def test_a_normalized_score_widens_the_band_where_the_run_is_harder():
    """Six runs, level 0.8 (the factor: the largest of the other five scores). Plain scores
    0.5–0.9 and 2.0: the hard run's 2.0 widens every easy band to 2.0 band-widths and is itself
    missed. Given difficulty 2.5 its normalized score is 0.8: the easy bands shrink to 0.9
    (0.8 for the run scoring 0.9, now missed) and the hard one widens to 0.9 × 2.5, held."""
    runs = [_band(x) for x in (0.5, 0.6, 0.7, 0.8, 0.9, 2.0)]
    plain = fcc.leave_one_run_out(runs, 0.8)
    hard = fcc.leave_one_run_out(runs, 0.8, difficulty=[1, 1, 1, 1, 1, 2.5])
    assert plain["cycles"] == pytest.approx(5 / 6) and hard["cycles"] == pytest.approx(5 / 6)
    assert plain["width"] == pytest.approx((5 * 0.4 + 0.18) / 6)
    assert hard["width"] == pytest.approx((4 * 0.18 + 0.16 + 0.2 * 0.9 * 2.5) / 6)


def test_leave_one_run_out_of_exchangeable_runs_holds_the_level():
    rng = np.random.default_rng(1)
    runs = []
    for _ in range(40):
        truth = 0.5 + 0.02 * rng.standard_normal(16)
        runs.append((np.full(16, 0.5), np.full(16, 0.48), np.full(16, 0.52), truth))
    cv = fcc.leave_one_run_out(runs, 0.8)
    assert cv["cycles"] == pytest.approx(0.8, abs=0.03)
    assert cv["width"] == pytest.approx(2 * 0.02 * 1.2816, rel=0.1)  # ±z(0.9)·σ


def test_the_band_widens_and_the_forecast_does_not_move(tmp_path, monkeypatch):
    """The conformal factors scale the band about the forecast; the forecast itself (every
    cycle's central value) is the same whatever they are."""
    monkeypatch.setitem(forecast_fit.SCREEN, "paper", 4)
    run = tmp_path / "run"
    run.mkdir()
    config = Config(trials=10, seed=2).with_overrides({"loop.cycles": 8})
    write_parquet(run / "metrics.parquet", simulate(config).metrics)
    (run / "config.toml").write_text(config.to_toml())
    obs = forecast_io.load_observed(run)
    small = {"fit_cycles": 5, "trials": 10, "draws": 2, "max_nfev": 3, "seed": 4}
    raw = fc.forecast(obs, conformal={}, **small).table
    wide = fc.forecast(obs, conformal={c: 3.0 for c in forecast_io.METRICS}, **small).table
    for col in forecast_io.METRICS:
        assert wide[col].tolist() == raw[col].tolist()  # bit-identical centrals
        assert (wide[f"{col}_lo"] <= raw[f"{col}_lo"] + 1e-12).all()
        assert (wide[f"{col}_hi"] >= raw[f"{col}_hi"] - 1e-12).all()
    later = ~raw["fitted"]
    grew = (wide["validity_hi"] - wide["validity_lo"])[later] > (
        raw["validity_hi"] - raw["validity_lo"]
    )[later]
    assert grew.any()


def test_factors_come_from_the_nearest_measured_fit_length(tmp_path, monkeypatch):
    """Files for 6 (the default name) and 10 fitted cycles: a forecast fitting 7 or 8 reads 6
    (8 is a tie: the shorter), 9 and 14 read 10; nothing measured gives no factors."""
    import json

    default = tmp_path / "forecast_conformal.json"
    monkeypatch.setattr(fc, "DATA", tmp_path)
    monkeypatch.setattr(fc, "CONFORMAL", default)
    assert fc.load_conformal(6) == ({}, None)
    default.write_text(json.dumps({"factor": {"validity": 2.0}}))
    fc.conformal_path(10).write_text(json.dumps({"factor": {"validity": 1.5}}))
    (tmp_path / "forecast_conformal_fitx.json").write_text("{}")  # not a length: ignored
    assert fc.measured_fit_cycles() == [6, 10]
    assert fc.conformal_path(10).name == "forecast_conformal_fit10.json"
    for n, (value, at) in {
        6: (2.0, 6),
        7: (2.0, 6),
        8: (2.0, 6),
        9: (1.5, 10),
        14: (1.5, 10),
    }.items():
        assert fc.load_conformal(n) == ({"validity": value}, at), n
