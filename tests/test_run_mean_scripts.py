"""scripts/drift_loo.py's model-free curves with a run mean, on cases whose answer is known."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

drift_loo = pytest.importorskip("drift_loo")


def test_the_flat_baseline_predicts_the_run_mean_itself():
    """With a run mean the flat baseline is that mean: each residual is observed − 0.506."""
    observed = np.array([0.440, 0.538, 0.745, 0.591, 0.418])
    by_name = {name: res for name, _, res in drift_loo.curves(run_mean=0.506, only="mean")}
    np.testing.assert_allclose(by_name["mean of the other cycles"], observed - 0.506)
    without = {name: res for name, _, res in drift_loo.curves(only="mean")}
    held = [np.delete(observed, i).mean() for i in range(5)]
    np.testing.assert_allclose(without["mean of the other cycles"], observed - held)


def test_a_run_mean_pulls_a_fitted_curve_towards_it():
    """A line in log-odds through four points, with a run mean far below every point, predicts
    the left-out cycle lower than without it: the mean is a residual the fit must answer."""
    line = "line in per-token log-odds"
    low = {n: r for n, _, r in drift_loo.curves(run_mean=0.2, only=line)}[line]
    free = {n: r for n, _, r in drift_loo.curves(only=line)}[line]
    assert np.all(low > free)  # residual = observed − predicted: lower predictions everywhere
