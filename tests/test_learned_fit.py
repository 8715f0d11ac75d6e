"""A learned fit with worker processes: the main process never imports torch (the workers do,
from the fork server that preloaded it), and the fit is the one a single process makes."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from archrefine.experiments.evaluations import Evaluations  # noqa: E402

CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
import pandas as pd
from test_calibrate import TINY_LEARNED
from archrefine.core.config import Config
from archrefine.experiments.calibrate import calibrate
t = pd.DataFrame({{"cycle": [1, 2, 3], "validity": [0.4, 0.6, 0.5]}})
cal = calibrate(t, generator="learned", base=Config().with_overrides(TINY_LEARNED), trials=1,
                n_boot=3, max_nfev=1, workers=2)
print(json.dumps({{"torch": "torch" in sys.modules, "params": cal.params}}))
"""


@pytest.mark.slow
def test_the_main_process_of_a_parallel_learned_fit_does_not_import_torch():
    tests = str(Path(__file__).parent)
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(tests=tests)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["torch"] is False
    assert set(result["params"]) == {
        "generator.learned.lr",
        "generator.learned.target_validity",
        "generator.learned.pretrain_noise",
    }


def test_same_stop_needs_no_torch():
    code = "import sys; import archrefine.sim.stops; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_preloading_keeps_the_values_and_skips_a_module_it_cannot_import():
    """`preload` only changes where imports happen: the same values, and a module that does not
    exist is skipped by the fork server rather than failing the pool."""
    points = [np.array([1.0, 2.0]), np.array([0.5, 0.25])]
    double = functools.partial(np.multiply, 2.0)  # picklable, from a light module
    with Evaluations(double, 2, preload=["json", "no_such_module_archrefine"]) as ev:
        assert [list(x) for x in ev.map(ev, points)] == [[2.0, 4.0], [1.0, 0.5]]
