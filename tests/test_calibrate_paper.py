"""The paper model's calibration script: its closed-form and shape pieces on known answers."""

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from calibrate_paper import base_logit, validity_shape, with_rule  # noqa: E402

from archrefine import Config, simulate  # noqa: E402


def test_base_logit_gives_the_chosen_cycle_one_validity():
    z = base_logit(0.03, 0.97, 15)
    assert 0.97 * expit(z) ** 15 == pytest.approx(0.03)
    cfg = Config(trials=400, seed=9).with_overrides({"generator.base_logit": z, "loop.cycles": 1})
    assert simulate(cfg).metrics.validity.mean() == pytest.approx(0.03, abs=0.006)


def test_validity_shape_recovers_known_segments():
    x = np.arange(1, 23, dtype=float)
    v = 0.05 + 0.01 * x + 0.09 * np.maximum(0, x - 7.5) - 0.1 * np.maximum(0, x - 15.5)
    shape = validity_shape(v)
    assert shape["r2"] == pytest.approx(1.0)
    assert [shape["s1"], shape["s2"], shape["s3"]] == pytest.approx([0.01, 0.1, 0.0], abs=1e-9)
    bent = validity_shape(v + 0.1 * np.sin(x))
    assert bent["r2"] < 0.98


def test_rules_tie_min_rate_and_temperature_span_to_fitted_values():
    out = with_rule({"schedule.rate": 0.8, "generator.temperature": 0.7})
    assert out["schedule.min_rate"] == pytest.approx(0.6)
    assert out["generator.temperature_span"] == pytest.approx(0.3)
    # the shipped defaults obey the same rules
    d = Config()
    assert d.schedule.min_rate == pytest.approx(2 * d.schedule.rate - d.schedule.max_rate)
    assert d.generator.temperature + d.generator.temperature_span == pytest.approx(1.0)
