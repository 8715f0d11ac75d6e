"""What archrefine's commands write at the top of a run directory, so a `--force` run can
remove an earlier run's results, and only those."""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["OUTPUTS", "remove_outputs"]

OUTPUTS = (
    "best.toml", "candidates.parquet", "candidates.sqlite", "candidates.sqlite-wal",
    "candidates.sqlite-shm", "checkpoint.bin", "claims.json", "claims.md", "compare.png",
    "config.toml", "fig1_trajectory.png", "fig2_topk.png", "fig3_phases.png",
    "fig4_schedules.png", "fig5_compare.png", "fitted.csv", "fitted.toml", "forecast.json",
    "forecast.png", "interventions.json", "loo.csv", "metrics.parquet", "overlay.png",
    "params.json", "pareto.json", "pareto.png", "phases.json", "prompt.txt", "report.html",
    "residuals.csv", "state.json", "sweep.json", "sweep.png", "trajectory.png",
    "trials.parquet", "robustness.json", "robustness.md", "robustness.png", "generator",
    "points", "jobs",
)  # fmt: skip
"""What archrefine's commands write at the top of a run directory (files, and a loop's
`generator/`, a sweep's `points/` and a robustness study's `jobs/` folders): what a `--force`
run removes first, so that the directory holds only the new run's results (a loop's report and
candidates stayed beside a `run --force`'s metrics, and `runs` listed the directory as that
run)."""


def remove_outputs(path: Path) -> None:
    """Remove every entry of `OUTPUTS` in `path` (a symlink itself, never what it points to);
    anything else there is the user's and stays."""
    for name in OUTPUTS:
        old = path / name
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink(missing_ok=True)
