"""calibrate's evaluations: each point computed once, the same values in worker processes."""

from __future__ import annotations

import functools

import numpy as np
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
