"""A bonus that grows with the accumulated fine-tuning set (`generator.bonus_growth = "set"`,
`SetGrowth` in sim/drift.py): off it changes nothing, on its per-round step is the set's size,
and a fit recovers the parameters of a trajectory it generated."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import archrefine.sim.paper as paper
from archrefine.core.config import Config
from archrefine.experiments.calibrate import CalibrationError, calibrate, free_params
from archrefine.experiments.drift_fit import Variant, fit_drift
from archrefine.experiments.fitting import spread
from archrefine.experiments.loo import check_folds
from archrefine.sim.loop import simulate

SET = {"generator.bonus_growth": "set"}
#: a rise that accelerates on a short horizon: with full selections the bonus completes after
#: round 6 (1 + 2 + … + 6 = 21 steps), then the drift pulls validity down. The rate is far from
#: its default (0.034), which is the fit's first start
TRUTH = {
    "generator.base_logit": 2.5,
    "generator.bonus_max": 5.0,
    "generator.bonus_rate": 1 / 21,
    "generator.drift": 0.5,
}
CYCLES = [1, 4, 6, 7, 12]


def _generator(config: Config, trials: int = 3) -> paper.PaperGenerator:
    rng = np.random.default_rng(0)
    return paper.PaperGenerator(config.generator, trials=trials, length=5, vocab=4, rng=rng)


def test_round_growth_never_builds_the_class(monkeypatch):
    """Off (the default), with and without drift, the metrics are bit-identical to those of
    the same run with `SetGrowth` made unusable, and the checkpoint state is unchanged."""
    for drift in (0.0, 0.3):
        config = Config(trials=6, seed=3).with_overrides(
            {"loop.cycles": 6, "generator.drift": drift}
        )
        before = simulate(config).metrics
        with monkeypatch.context() as m:

            def refuse(*args, **kwargs):
                raise AssertionError("SetGrowth built with bonus_growth = 'round'")

            m.setattr(paper, "SetGrowth", refuse)
            pd.testing.assert_frame_equal(before, simulate(config).metrics, check_exact=True)
            assert "set_size" not in _generator(config).state()


def test_each_rounds_bonus_step_is_the_accumulated_set_size():
    """Known sizes: selections of 10, 5, 0, 10 and 10 of k = 10 make a set of 1, 1.5, 1.5,
    2.5 and 3.5 full selections, and each round's bonus step is bonus_rate times that; the
    round rule steps by the selection's own fullness, 1, 0.5, 0, 1, 1."""
    rate = 0.01
    config = Config().with_overrides({"generator.bonus_rate": rate})
    grow, flat = _generator(config.with_overrides(SET)), _generator(config)
    pool = np.zeros((3, 10, 5), dtype=np.int16)
    steps: dict[str, list[float]] = {"set": [], "round": []}
    for size in (10, 5, 0, 10, 10):
        for name, gen in (("set", grow), ("round", flat)):
            old = gen.bonus.copy()
            gen.refine(pool, np.full(3, size))
            steps[name].append(float((gen.bonus - old)[0]))
    assert steps["set"] == pytest.approx([rate * n for n in (1, 1.5, 1.5, 2.5, 3.5)], abs=1e-15)
    assert steps["round"] == pytest.approx([rate * n for n in (1, 0.5, 0, 1, 1)], abs=1e-15)
    assert grow.state()["set_size"].tolist() == [3.5] * 3
    other = _generator(config.with_overrides(SET))
    other.load_state({k: np.array(v) for k, v in grow.state().items()})
    assert other.growth.size.tolist() == [3.5] * 3


def test_in_a_run_the_bonus_rises_faster_every_cycle_until_it_completes():
    """Without drift the loop's selections stay full, so round t steps t · bonus_rate: the
    bonus column rises by 1, 2, ..., 6 steps a cycle and stops at 1 (21 steps); the round
    rule steps by 1 each cycle."""
    config = Config(trials=4, seed=1).with_overrides(
        TRUTH | {"loop.cycles": 12, "generator.drift": 0.0}
    )
    grow = simulate(config.with_overrides(SET)).metrics.groupby("cycle")
    flat = simulate(config).metrics.groupby("cycle")
    assert (grow["pool_size"].min() == 10).all()
    steps = np.diff(grow["bonus"].mean().to_numpy()) * 21
    assert steps[:6] == pytest.approx(np.arange(1, 7))
    assert steps[6:] == pytest.approx(0, abs=1e-9)
    assert np.diff(flat["bonus"].mean().to_numpy()) * 21 == pytest.approx(1)


def test_set_growth_is_refused_for_a_generator_without_a_bonus():
    over = SET | {"generator.kind": "learned", "space.kind": "grounded"}
    with pytest.raises(ValueError, match="bonus_growth 'set' needs generator.kind 'paper'"):
        Config().with_overrides(over)


def _observed(truth: Config) -> pd.DataFrame:
    v = simulate(truth).metrics.groupby("cycle")["validity"].mean().to_numpy()
    return pd.DataFrame({"cycle": CYCLES, "validity": v[np.array(CYCLES) - 1]})


def test_a_fit_recovers_the_parameters_that_generated_the_data():
    """Common random numbers: data simulated with set growth at known `bonus_rate` and `drift`
    (base_logit and bonus_max given) are fitted from the shared, data-free starts; the fit
    lands near the truth and passes through the data. The data rise faster late than early."""
    truth = Config(trials=6, seed=11).with_overrides(TRUTH | SET | {"loop.cycles": 12})
    obs = _observed(truth)
    v = obs.set_index("cycle")["validity"]
    assert v[6] - v[4] > 2 * abs(v[4] - v[1]) and v[12] < v.max() - 0.3  # accelerates, falls
    fixed = {k: TRUTH[k] for k in ("generator.base_logit", "generator.bonus_max")}
    variant = Variant("rate and drift", fixed, screen=8, keep=1, growth="set")
    fit = fit_drift(obs, variant, truth, {"validity": spread(obs["validity"])}, max_nfev=8)
    assert fit.params["generator.bonus_rate"] == pytest.approx(1 / 21, rel=0.15)
    assert fit.params["generator.drift"] == pytest.approx(0.5, abs=0.1)
    assert fit.rmse["validity"] < 0.03


def test_drift_set_is_a_three_parameter_generator_for_calibrate():
    """`calibrate --generator drift-set` fits three parameters, so leave-one-out on Khalid's
    five valid rates alone is allowed (three against four), where drift's four were not."""
    from archrefine.experiments.trajectory import KHALID, load_trajectory

    assert set(free_params("drift-set")) == {
        "generator.base_logit",
        "generator.bonus_rate",
        "generator.drift",
    }
    khalid = load_trajectory(KHALID)
    check_folds(khalid, generator="drift-set", columns=["validity"])
    with pytest.raises(CalibrationError, match="without cycle"):
        check_folds(khalid, generator="drift", columns=["validity"])
    with pytest.raises(CalibrationError, match="drift-set"):
        calibrate(khalid, generator="drift_set")


def test_calibrate_drift_set_simulates_a_growing_bonus():
    """`calibrate --generator drift-set` runs the set-growth mechanism (its fitted bonus column
    accelerates) and keeps bonus_max at the base config's value."""
    truth = Config(trials=4, seed=11).with_overrides(TRUTH | {"loop.cycles": 12})
    obs = _observed(truth.with_overrides(SET))
    cal = calibrate(obs, generator="drift-set", base=truth, trials=4, seed=11, n_boot=0,
                    max_nfev=2)  # fmt: skip
    assert cal.config.generator.bonus_growth == "set"
    assert cal.config.generator.bonus_max == TRUTH["generator.bonus_max"]
    assert set(cal.params) == set(free_params("drift-set"))
