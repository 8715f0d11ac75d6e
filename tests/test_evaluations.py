"""calibrate's evaluations: each point computed once, the same values in worker processes."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

from archrefine.experiments.evaluations import Evaluations

DOUBLE = functools.partial(np.multiply, 2.0)  # picklable, so workers can run it


def test_each_point_is_computed_once_and_counted_in_the_order_asked():
    calls, counts = [], []

    def fn(u):
        calls.append(u.copy())
        return u.sum()

    with Evaluations(fn, 1, counts.append) as ev:
        assert ev(np.array([1.0, 2.0])) == 3.0
        assert ev.map(lambda u: ev(u) + 1, [np.array([1.0, 2.0]), np.array([0.5, 0.0])]) == [
            4.0,
            1.5,
        ]
    assert len(calls) == 2 and counts == [1, 2] and ev.count == 2


def test_worker_processes_give_the_serial_values():
    points = [np.array([i, -i / 3]) for i in range(5)]
    with Evaluations(DOUBLE, 1) as serial, Evaluations(DOUBLE, 2) as parallel:
        one = serial.map(serial, points)
        two = parallel.map(parallel, points + points[:2])  # repeats are not run again
    assert all(np.array_equal(a, b) for a, b in zip(one, two))
    assert parallel.count == 5
    with pytest.raises(ValueError, match="workers"):
        Evaluations(DOUBLE, 0)


def test_a_point_the_objective_calls_the_same_as_a_finished_one_is_not_run():
    calls = []

    def fn(u):
        calls.append(u.copy())
        return (u[0], round(u[1]))  # the value says which second coordinates give the same run

    def same_as(u, point, value):
        return u[0] == point[0] and round(u[1]) == value[1]

    with Evaluations(fn, 1, same_as=same_as) as ev:
        assert ev(np.array([1.0, 2.0])) == (1.0, 2)
        assert ev(np.array([1.0, 2.2])) == (1.0, 2)  # same run: not simulated
        assert ev(np.array([1.0, 2.7])) == (1.0, 3)  # another run
        assert ev(np.array([2.0, 2.0])) == (2.0, 2)
    assert len(calls) == ev.count == 3


@pytest.mark.slow
def test_a_learned_fit_is_the_same_with_one_worker_and_with_two():
    pytest.importorskip("torch")
    import pandas as pd
    from test_calibrate import TINY_LEARNED

    from archrefine.core.config import Config
    from archrefine.experiments.calibrate import calibrate

    t = pd.DataFrame({"cycle": [1, 2, 3], "validity": [0.4, 0.6, 0.5]})
    fits = [
        calibrate(
            t,
            generator="learned",
            params=["generator.learned.lr", "generator.learned.target_validity"],
            base=Config().with_overrides(TINY_LEARNED),
            trials=1,
            n_boot=3,
            max_nfev=1,
            workers=workers,
        )
        for workers in (1, 2)
    ]
    assert fits[0].params == fits[1].params and fits[0].info == fits[1].info
    pd.testing.assert_frame_equal(fits[0].residuals, fits[1].residuals)


def _bumpy(u):
    """A deterministic least-squares objective with a curved valley (known optimum (0.3, 0.6))."""
    return np.array([u[0] - 0.3, 4 * (u[1] - 0.6) + (u[0] - 0.3) ** 2, np.sin(3 * u[0] * u[1])])


@pytest.mark.parametrize("max_nfev", [1, 2, 3, 5])
@pytest.mark.parametrize("u0", [(0.9, 0.1), (0.05, 0.95), (0.5, 0.5)])
def test_a_start_that_skips_its_last_jacobian_takes_the_same_steps(max_nfev, u0):
    from scipy.optimize import least_squares

    from archrefine.experiments.calibrate import _HAS_WORKERS
    from archrefine.experiments.evaluations import FitStart

    if not _HAS_WORKERS:
        pytest.skip("scipy < 1.16 has no workers map: FitStart is not used")
    options = {"bounds": (0, 1), "diff_step": 0.05, "x_scale": 1.0, "max_nfev": max_nfev}
    u0 = np.array(u0)
    with Evaluations(_bumpy) as plain:
        want = least_squares(plain, u0, workers=plain.map, **options)
    with Evaluations(_bumpy) as lazy:
        start = FitStart(lazy, lazy, max_nfev)
        got = least_squares(start, u0, workers=start.map, **options)
        assert start.skipped  # the Jacobian after the last step is never needed for a step
        assert lazy.count < plain.count
        jac = least_squares(lazy, got.x, workers=lazy.map, **options | {"max_nfev": 1}).jac
    assert np.array_equal(got.x, want.x) and got.cost == want.cost
    assert np.array_equal(got.fun, want.fun) and np.array_equal(jac, want.jac)
    assert got.nfev == want.nfev  # the same function evaluations; fewer Jacobian columns


def test_a_fit_that_skips_the_unused_jacobians_is_the_same_fit(monkeypatch):
    from archrefine.experiments import calibrate as cal_module
    from archrefine.experiments.calibrate import KHALID, calibrate, load_trajectory
    from archrefine.experiments.evaluations import FitStart

    if not cal_module._HAS_WORKERS:
        pytest.skip("scipy < 1.16 has no workers map: FitStart is not used")
    kwargs = {"params": ["generator.base_logit", "generator.bonus_rate"], "trials": 4}
    t = load_trajectory(KHALID)
    lazy = calibrate(t, n_boot=5, max_nfev=2, **kwargs)
    monkeypatch.setattr(FitStart, "map", lambda self, func, xs: self.evals.map(func, xs))
    every = calibrate(t, n_boot=5, max_nfev=2, **kwargs)  # as before: every Jacobian computed
    every_no_boot = calibrate(t, n_boot=0, max_nfev=2, **kwargs)
    monkeypatch.undo()
    assert lazy.params == every.params and lazy.stderr == every.stderr
    assert lazy.interval == every.interval and lazy.rmse == every.rmse
    pd.testing.assert_frame_equal(lazy.residuals, every.residuals)
    assert lazy.info["loss"] == every.info["loss"]
    assert lazy.info["evaluations"] < every.info["evaluations"]
    no_boot = calibrate(t, n_boot=0, max_nfev=2, **kwargs)  # as forecast fits: no Jacobian read
    assert no_boot.params == every.params and no_boot.interval == every_no_boot.interval
