"""The simulator's second thread (fitness and novelty beside validity) and numba's preload."""

from __future__ import annotations

import subprocess
import sys

import pytest

from archrefine import Config, simulate
from archrefine.core import fast
from archrefine.sim import loop


@pytest.mark.parametrize(
    "over",
    [
        {"loop.archive": "selected"},
        {"loop.archive": "valid", "generator.drift": 0.1},
        {"intervention.islands": 3, "intervention.replay": 0.3},
        {"intervention.accumulate": True, "intervention.selection": "novelty"},
        {"generator.temperature_span": 0.5, "intervention.elite_share": 0.2},
        {"intervention.mutation": "temperature", "intervention.temperature_span": 1.5},
    ],
)
def test_work_beside_the_loop_gives_identical_metrics(monkeypatch, over) -> None:
    """Fitness, novelty (in slices both threads take), validity's costs and the decoding
    distribution on the helper thread: the same numbers."""
    cfg = Config(trials=12, seed=4).with_overrides(over)
    monkeypatch.setattr(loop, "BESIDE", 10**12)  # never beside
    alone = simulate(cfg).metrics
    monkeypatch.setattr(loop, "BESIDE", 0)  # always beside
    beside = simulate(cfg).metrics
    assert beside.equals(alone)


PRELOAD = """
import sys, threading, time
from archrefine.core import fast, knn
knn.preload(10, 50, 260, 30)  # 130k pairs: below NUMBA_PAIRS, nothing starts
assert not any(t.name == "archrefine-numba" for t in threading.enumerate())
knn.preload(1000, 50, 260, 30)  # 13M pairs: loads in the background
for _ in range(1200):
    if fast.loaded():
        break
    time.sleep(0.05)
assert fast.loaded(), "numba did not load"
assert "scipy" not in sys.modules, "numba's load imported scipy"
print("ok")
"""


@pytest.mark.skipif(not fast.available(), reason="needs numba (the fast extra)")
def test_preload_loads_numba_in_the_background_only_when_a_run_needs_it() -> None:
    done = subprocess.run([sys.executable, "-c", PRELOAD], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-800:]
