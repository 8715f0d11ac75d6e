"""The batched simulator agrees with a per-candidate reference implementation of the same model."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from archrefine import Config, simulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from reference_loop import simulate_reference  # noqa: E402


@pytest.mark.slow
def test_batched_loop_matches_per_candidate_reference_in_distribution():
    cfg = Config(trials=40, seed=21).with_overrides({"loop.cycles": 10})
    ref = pd.DataFrame([row for trial in simulate_reference(cfg) for row in trial])
    fast = simulate(cfg.with_overrides({"trials": 400})).metrics
    for key in ("validity", "novelty", "diversity", "fitness"):
        a = ref.groupby("cycle")[key]
        b = fast.groupby("cycle")[key]
        se = np.sqrt(a.var() / a.count() + b.var() / b.count())
        z = ((a.mean() - b.mean()) / se).abs()
        assert (z < 4.5).all(), (key, z.round(2).tolist())
