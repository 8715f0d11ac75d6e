"""What keeps `archrefine reproduce` small (issue 14) changes no number: the claims checked in a
forked process, the figures drawn in forked processes, ranks without scipy."""

import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from archrefine import Config
from archrefine.experiments import checks
from archrefine.experiments.claims import as_records
from archrefine.experiments.reproduce import FIGURES, reproduce, start, write
from archrefine.experiments.runner import in_child


def test_ranks_are_scipys_rankdata_ties_and_nans_included():
    rankdata = pytest.importorskip("scipy.stats").rankdata
    rng = np.random.default_rng(0)
    for case in range(300):
        shape = tuple(int(x) for x in rng.integers(1, 6, size=rng.integers(1, 4)))
        x = rng.integers(0, 4, size=shape).astype(float if case % 3 else int)  # many ties
        if case % 3 == 2:
            x.flat[rng.integers(0, x.size)] = np.nan
        axis = int(rng.integers(-len(shape), len(shape)))
        want, got = rankdata(x, axis=axis), checks.ranks(x, axis=axis)
        assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True)
    assert checks.ranks(np.array([3, 1, 3, 2])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_cosine_check_without_diversity_at_cycle_one_warns_nothing():
    div = np.array([[0.0, 0.0, 0.0], [0.5, 0.4, 0.4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        measured, holds = checks.cosine_check(div)
    assert measured == {"kept": None} and holds.tolist() == [False, True]


@pytest.mark.skipif(sys.platform == "win32", reason="no fork")
def test_in_child_runs_in_another_process_that_inherits_its_arguments():
    code = (
        "import os, sys\n"
        "from archrefine.experiments.runner import in_child\n"
        "def pcm(plus):\n"
        "    import wave\n"
        "    return plus(wave.WAVE_FORMAT_PCM)\n"
        "assert in_child(lambda: os.getpid()) != os.getpid()\n"  # inherited, never pickled
        "assert in_child(pcm, lambda h: h + 1) == 2\n"
        "assert 'wave' not in sys.modules, 'the child import reached the parent'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    with pytest.raises(ZeroDivisionError):
        in_child(lambda: 1 / 0)


def test_claims_and_files_are_the_same_with_forked_processes_as_in_one(tmp_path):
    cfg = Config(trials=3, seed=2).with_overrides({"loop.cycles": 10, "loop.population": 12})
    one, forked = reproduce(cfg, workers=1, n_boot=10), reproduce(cfg, workers=2, n_boot=10)
    pd.testing.assert_frame_equal(one.frame, forked.frame, check_exact=True)
    assert as_records(one.claims) == as_records(forked.claims)
    assert one.phases == forked.phases
    out = tmp_path / "rep"
    write(out, cfg, forked, started=start(out, cfg, force=False))
    assert all((out / f).stat().st_size > 1000 for f in FIGURES)
    assert (out / "claims.json").exists() and (out / "metrics.parquet").exists()
