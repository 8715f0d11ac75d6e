"""The claim checks, checked on synthetic experiments whose answers are known."""

import json

import numpy as np
import pandas as pd
import pytest

from archrefine import Config
from archrefine.experiments.claims import (
    TOPK,
    as_records,
    balance,
    detect,
    evaluate,
    paper_plan,
)
from archrefine.experiments.reproduce import claims_table, reproduce

T = np.arange(1, 23, dtype=float)


def sigmoid(centre, width=1.5, t=T):
    return 1 / (1 + np.exp(-(t - centre) / width))


def polyline(kinks, slopes, t=T):
    y = slopes[0] * (t - t[0])
    for s0, s1, k in zip(slopes[:-1], slopes[1:], kinks):
        y = y + (s1 - s0) * np.clip(t - k, 0, None)
    return y


def long(experiment, condition, **series):
    """Long-format rows from `(trials, cycles)` arrays."""
    trials, cycles = next(iter(series.values())).shape
    idx = pd.MultiIndex.from_product(
        [range(trials), range(1, cycles + 1)], names=["trial", "cycle"]
    )
    df = pd.DataFrame({k: np.asarray(v).ravel() for k, v in series.items()}, index=idx)
    return df.reset_index().assign(experiment=experiment, condition=condition)


def trajectory(trials=40, *, lag=0.0, shape="phases", seed=0, noise=0.02):
    """Validity rises between kinks at cycles 8 and 15 ("phases"), along an S-curve centred on
    cycle 8 ("sigmoid") or a straight line ("line"); novelty falls `lag` cycles later; diversity
    declines throughout; trials that happen to be more valid are less novel."""
    rng = np.random.default_rng(seed)
    luck = rng.normal(0, noise, (trials, len(T)))
    if shape == "phases":
        v = 0.2 + polyline([8, 15], [0.004, 0.08, 0.005])
        n = 0.9 - polyline([8 + lag, 15 + lag], [0.004, 0.07, 0.008])
    elif shape == "bowl":  # curved, so kinks explain it, but no exploration/plateau shape
        v, n = 0.2 + 0.004 * (T - 11) ** 2, 0.9 - 0.004 * (T - 11) ** 2
    elif shape == "sigmoid":
        v, n = 0.2 + 0.7 * sigmoid(8), 0.9 - 0.6 * sigmoid(8 + lag)
    else:
        v, n = np.linspace(0.2, 0.8, len(T)), np.linspace(0.9, 0.3, len(T))
    d = 1 - 0.01 * (T - 1)
    return long(
        "trajectory",
        "baseline",
        validity=v + luck,
        novelty=n - luck + rng.normal(0, noise / 2, luck.shape),
        diversity=d + rng.normal(0, noise / 2, luck.shape),
        fitness=0.5 + v / 2 + rng.normal(0, noise, luck.shape),
    )


def schedules(trials=40, *, constant_kept=0.9, seed=0, cycles=22):
    """Cyclic diversity oscillates with period 4 about 0.94 of cycle 1 and its validity dips
    every period; the decays keep less diversity."""
    rng = np.random.default_rng(seed)
    t = np.arange(1, cycles + 1, dtype=float)
    wave = np.cos(2 * np.pi * (t - 1) / 4)
    ramp = np.clip((t - 1) / 5, 0, 1)
    kept = {"constant": constant_kept, "linear": 0.85, "cosine": 0.82}
    frames = []
    for kind in ("constant", "linear", "cosine", "cyclic"):
        if kind == "cyclic":
            div = 1 - ramp * 0.06 + 0.02 * wave * ramp
            val = 0.9 - 0.005 * wave
        else:
            div = 1 - (1 - kept[kind]) * (t - 1) / (cycles - 1)
            val = np.full(cycles, 0.9)
        shape = (trials, cycles)
        frames.append(
            long(
                "schedules",
                kind,
                diversity=div + rng.normal(0, 0.004, shape),
                validity=val + rng.normal(0, 0.004, shape),
            )
        )
    return pd.concat(frames)


def topk(trials=40, *, best=10, seed=0):
    """Final validity and fitness fall with k, diversity kept rises until `best` and then barely:
    the balance score peaks at k = best."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in TOPK:
        kept = min(k / best, 1.0) * 0.9 + 0.001 * max(k - best, 0)
        final_v = 1 - 0.015 * k
        ramp = (T - 1) / 21
        shape = (trials, len(T))
        frames.append(
            long(
                "topk",
                f"k={k}",
                validity=0.3 + (final_v - 0.3) * ramp + rng.normal(0, 0.005, shape),
                fitness=0.5 + (0.9 - 0.003 * k - 0.5) * ramp + rng.normal(0, 0.005, shape),
                diversity=1 - (1 - kept) * ramp + rng.normal(0, 0.005, shape),
            )
        )
    return pd.concat(frames)


def claims_of(frame, n_boot=200):
    found = detect(frame, "constant", n_boot=n_boot)
    return {c.id: c for c in evaluate(frame, found, n_boot=n_boot)}


def test_balance_is_the_harmonic_mean_of_relative_validity_and_diversity_kept():
    v, kept = np.array([0.9, 0.6, 0.3]), np.array([0.5, 0.8, 1.0])
    rel = v / 0.9
    assert np.allclose(balance(v, kept), 2 * rel * kept / (rel + kept))


def test_plan_has_a_dense_k_grid_without_k_larger_than_the_population():
    plan = paper_plan(population=20)
    assert list(plan["topk"]) == [f"k={k}" for k in range(1, 17)] + ["k=18", "k=20"]
    assert list(plan["schedules"]) == ["constant", "linear", "cosine", "cyclic"]


@pytest.mark.parametrize("trials", [5, 200])
def test_known_phases_hold_at_any_trial_count(trials):
    c1 = claims_of(trajectory(trials, seed=trials))["C1"]
    assert c1.measured["count"] == 2, c1.measured
    assert c1.measured["boundaries"] == pytest.approx([8, 15], abs=1)
    assert all(c1.measured["shape"].values()) and c1.holds
    assert c1.confidence >= 0.8
    for lo, hi in c1.measured["ci90"]:
        assert isinstance(lo, float) and isinstance(hi, float)


def test_a_curved_bowl_is_not_three_phases_whatever_its_kinks():
    c1 = claims_of(trajectory(100, shape="bowl"))["C1"]
    assert not c1.holds and c1.confidence <= 0.1
    assert not c1.measured["shape"]["exploration_validity_low"]


def test_straight_trends_are_not_three_phases():
    c1 = claims_of(trajectory(100, shape="line"))["C1"]
    assert c1.measured["count"] != 2 and not c1.holds and c1.confidence <= 0.1


@pytest.mark.parametrize("lag", [0.0, 2.4])
def test_a_known_lag_is_inside_its_interval(lag):
    c7 = claims_of(trajectory(60, lag=lag, shape="sigmoid"))["C7"]
    lo, hi = c7.measured["lag_ci90"]
    assert lo - 0.3 <= lag <= hi + 0.3
    assert c7.holds == (lag == 0.0)
    assert c7.confidence >= 0.9 if lag == 0.0 else c7.confidence <= 0.1


def test_inverse_correlation_needs_changes_and_trials_to_agree():
    c2 = claims_of(trajectory(60))["C2"]
    m = c2.measured
    assert m["levels_r"] < -0.9 and m["changes_r"] < -0.5 and m["fixed_cycle_rho"] < -0.3
    assert c2.holds and c2.confidence >= 0.9


def test_a_known_best_k_is_inside_its_interval_and_decides_the_claim():
    frame = pd.concat([trajectory(), topk(best=10)])
    c6 = claims_of(frame)["C6"]
    lo, hi = c6.measured["best_k_ci90"]
    assert lo <= 10 <= hi and c6.holds and c6.confidence >= 0.8
    assert c6.measured["rho_diversity"] >= 0.8 and c6.measured["rho_validity"] <= -0.8
    c6 = claims_of(pd.concat([trajectory(), topk(best=20)]))["C6"]
    lo, hi = c6.measured["best_k_ci90"]
    assert lo <= 20 <= hi and not c6.holds and c6.confidence <= 0.1


def test_cyclic_check_does_not_depend_on_where_the_last_cycle_falls():
    results = []
    for cycles in (19, 20, 21, 22):
        frame = pd.concat([trajectory(), schedules(cycles=cycles)])
        frame = frame[frame.cycle <= cycles]
        results.append(claims_of(frame, n_boot=20)["C4"])
    kept = [c.measured["kept"] for c in results]
    share = [c.measured["validity_share"] for c in results]
    assert max(kept) - min(kept) <= 0.005 and min(share) >= 0.99, (kept, share)
    assert all(c.holds and c.measured["cyclic_keeps_most"] for c in results)


def test_cyclic_must_keep_the_most_diversity():
    c4 = claims_of(pd.concat([trajectory(), schedules(constant_kept=0.97)]))["C4"]
    assert not c4.measured["cyclic_keeps_most"] and not c4.holds and c4.confidence <= 0.1
    assert c4.measured["kept_by_schedule"]["constant"] > c4.measured["kept"]


@pytest.mark.parametrize("constant_kept, holds", [(0.9, True), (0.95, False)])
def test_diversity_loss_uses_the_papers_band(constant_kept, holds):
    claims = claims_of(pd.concat([trajectory(), schedules(constant_kept=constant_kept)]))
    c3 = claims["C3"]
    assert c3.measured["constant_loss"] == pytest.approx(1 - constant_kept, abs=0.01)
    assert c3.holds == holds and (c3.confidence >= 0.9 if holds else c3.confidence <= 0.1)
    assert claims["C5"].measured["kept"] == pytest.approx(0.82, abs=0.01) and claims["C5"].holds


def test_every_number_is_a_json_number_and_confidence_a_share():
    frame = pd.concat([trajectory(), schedules(), topk()])
    claims = claims_of(frame)
    text = json.dumps(as_records(list(claims.values())))
    assert '"[' not in text  # no interval written as a string

    def walk(x):
        if isinstance(x, dict):
            return all(walk(v) for v in x.values())
        if isinstance(x, list):
            return all(walk(v) for v in x)
        return x is None or isinstance(x, (bool, int, float))

    for c in claims.values():
        assert walk(c.measured), c.id
        assert 0.0 <= c.confidence <= 1.0
    table = claims_table(list(claims.values()), "synthetic")
    assert "| confidence |" in table and "\\|lag\\|" in table


def test_one_run_has_no_confidence_but_is_still_checked():
    frame = trajectory(1)
    claims = claims_of(frame)
    assert [c.id for c in claims.values()] == [f"C{i}" for i in range(1, 8)]
    assert all(c.confidence is None for c in claims.values())
    assert claims["C1"].holds is not None and claims["C7"].holds is not None
    assert claims["C2"].measured["fixed_cycle_rho"] is None
    assert claims["C3"].holds is None and claims["C6"].holds is None


def test_same_seed_same_claims():
    cfg = Config(trials=4, seed=5).with_overrides({"loop.cycles": 12})
    a, b = reproduce(cfg, workers=1, n_boot=20), reproduce(cfg, workers=1, n_boot=20)
    assert as_records(a.claims) == as_records(b.claims)


@pytest.mark.slow
def test_another_generator_is_compared_with_the_paper_generator(tmp_path):
    pytest.importorskip("torch")
    from archrefine.experiments.reproduce import COMPARE, draw

    cfg = Config(trials=2, seed=1).with_overrides(
        {
            "space.kind": "grounded",
            "generator.kind": "learned",
            "loop.cycles": 6,
            "generator.learned.steps": 2,
            "generator.learned.batch": 8,
        }
    )
    rep = reproduce(cfg, workers=1, n_boot=0)
    assert set(rep.frame.experiment) == {"trajectory", "topk", "schedules", "comparison"}
    assert len(rep.claims) == 7
    draw(tmp_path, rep.frame, rep.phases, cfg.schedule.kind, workers=1)
    assert (tmp_path / COMPARE).stat().st_size > 1000


@pytest.mark.parametrize("boundaries", [[8.0, 15.0], [6.0, 10.0, 15.0]])
def test_figures_draw_whatever_number_of_boundaries_was_detected(tmp_path, boundaries):
    from archrefine.core.analysis import Phases
    from archrefine.experiments import plots

    found = Phases(boundaries, list(boundaries), list(boundaries), [8.0, 15.0])
    frame = trajectory(5)
    plots.trajectory(frame, tmp_path / "fig1.png", found=found)
    plots.phases(frame, found, tmp_path / "fig3.png")
    assert (tmp_path / "fig1.png").stat().st_size > 1000
    assert (tmp_path / "fig3.png").stat().st_size > 1000


@pytest.mark.parametrize("named", [True, False])
def test_phases_are_named_in_the_figures_only_when_c1_held(monkeypatch, tmp_path, named):
    from archrefine.core.analysis import Phases
    from archrefine.experiments import plots

    texts: list[str] = []
    real_save = plots.save_figure

    def spy(fig, path, **kw):
        texts.extend(t.get_text() for ax in fig.axes for t in ax.texts)
        for ax in fig.axes:
            legend = ax.get_legend()
            texts.extend(t.get_text() for t in (legend.get_texts() if legend else []))
        real_save(fig, path, **kw)

    monkeypatch.setattr(plots, "save_figure", spy)
    found = Phases([8.0, 15.0], [7.0, 14.0], [9.0, 16.0], [8.0, 15.0])
    frame = trajectory(5)
    plots.trajectory(frame, tmp_path / "fig1.png", found=found, named=named)
    plots.phases(frame, found, tmp_path / "fig3.png", named=named)
    assert any("exploration" in t for t in texts) == named
    assert any("detected boundary" in t for t in texts)


def test_trajectory_figure_draws_a_metric_that_is_missing_or_zero_throughout(tmp_path):
    from archrefine.experiments import plots

    frame = trajectory(3).assign(fitness=np.nan, diversity=0.0)
    plots.trajectory(frame, tmp_path / "fig1.png")
    assert (tmp_path / "fig1.png").stat().st_size > 1000
