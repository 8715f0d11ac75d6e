"""The package layout (issue 12): layers hold, documented names stay, the loop's hook is exact."""

import importlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from archrefine import Config, simulate

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("archrefine", ["Config", "simulate", "Result"]),
        ("archrefine.space", ["VOCAB", "LENGTH", "is_valid", "build", "to_source", "explain",
                              "KNOWN", "InvalidArchitecture"]),
        ("archrefine.evaluate.sandbox", ["run_code", "SandboxPool", "TrainSpec", "Outcome"]),
        ("archrefine.candidates", ["CandidateStore"]),
        ("archrefine.cli", ["main", "app"]),
    ],
)  # fmt: skip
def test_documented_names_stay_importable(module, names):
    mod = importlib.import_module(module)
    assert [n for n in names if not hasattr(mod, n)] == []


def test_every_folder_says_what_it_does_and_may_import():
    for init in sorted((ROOT / "src/archrefine").glob("*/__init__.py")):
        doc = (init.read_text().split('"""') + ["", ""])[1]
        assert "import" in doc.lower(), f"{init.parent.name}/__init__.py: what may it import?"


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="needs import-linter")
def test_import_contracts_hold():
    done = subprocess.run(["lint-imports"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:]


def test_on_candidates_sees_the_values_the_metrics_average():
    seen = []
    config = Config(trials=3, seed=1).with_overrides({"loop.cycles": 4})
    frame = simulate(config, on_candidates=lambda c, v, f, n: seen.append((c, v, f, n))).metrics
    assert [c for c, *_ in seen] == [1, 2, 3, 4]
    validity = np.stack([v.mean(axis=1) for _, v, _, _ in seen], axis=1)  # (trials, cycles)
    novelty = np.stack([n.mean(axis=1) for _, _, _, n in seen], axis=1)
    table = frame.sort_values(["trial", "cycle"])
    np.testing.assert_allclose(table["validity"].to_numpy(), validity.ravel())
    np.testing.assert_allclose(table["novelty"].to_numpy(), novelty.ravel())
    assert np.array_equal(frame.to_numpy(), simulate(config).metrics.to_numpy(), equal_nan=True)
