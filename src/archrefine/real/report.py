"""A real loop's report in the simulator's formats: trajectory figure, phases, claims table.

One loop is the paper's trajectory experiment with one trial, so the claims that need the
top-k and schedule experiments (C3–C6) are listed as not measured rather than guessed; run one
loop per condition and compare them (`archrefine plot`, `archrefine compare`) to measure those.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from archrefine.core.store import atomic_write_text, write_json
from archrefine.experiments import plots
from archrefine.experiments.claims import PHASE_SERIES, as_records, evaluate, per_trial
from archrefine.experiments.reproduce import claims_table, phases_record
from archrefine.real.config import RealConfig

FILES = ("config.toml", "prompt.txt", "candidates.sqlite", "metrics.parquet", "trajectory.png",
         "phases.json", "claims.json", "claims.md")  # fmt: skip


def long_format(frame: pd.DataFrame) -> pd.DataFrame:
    """The metrics as the simulator's long format (experiment `trajectory`, condition
    `baseline`), with gaps (a cycle without code has no novelty) filled by interpolation."""
    out = frame.sort_values("cycle").copy()
    for col in ("validity", "novelty", "diversity", "fitness"):
        out[col] = out[col].astype(float).interpolate(limit_direction="both")
    return out.assign(experiment="trajectory", condition="baseline")


def write_report(out: Path, config: RealConfig, frame: pd.DataFrame) -> list[str]:
    """Write trajectory.png, phases.json, claims.json and claims.md; return the run's files."""
    from archrefine.core.analysis import phases

    out = Path(out)
    data = long_format(frame)
    found = phases(per_trial(data, "trajectory", "baseline", PHASE_SERIES), n_boot=0)
    cycles = len(data)
    try:
        plots.trajectory(
            frame.assign(trial=0), out / "trajectory.png", found=found if cycles >= 9 else None,
            title=f"Real loop ({config.generator.kind} generator)",
        )  # fmt: skip
    except (ValueError, ArithmeticError) as err:  # e.g. every candidate failed: no values
        warnings.warn(f"trajectory.png not drawn: {' '.join(str(err).split())}", stacklevel=2)
    write_json(out / "phases.json", phases_record(found))
    if cycles >= 5 and data[list(PHASE_SERIES)].notna().all().all():
        claims = evaluate(data, found)
    else:
        claims = []
    write_json(out / "claims.json", as_records(claims))
    title = (
        f"Claims check (real loop, generator {config.generator.kind}, seed {config.seed}, "
        f"{cycles} cycles × {config.loop.population} candidates)"
    )
    text = claims_table(claims, title) if claims else f"# {title}\n\nToo few cycles to check.\n"
    atomic_write_text(out / "claims.md", text)
    return [f for f in FILES if (out / f).exists()]


def summary(frame: pd.DataFrame) -> str:
    """One line on the last cycle, for the command line."""
    last = frame.iloc[-1]
    parts = [f"cycle {int(last.cycle)}"]
    for key in ("validity", "novelty", "diversity", "fitness", "best_fitness"):
        value = last[key]
        parts.append(f"{key} {value:.3f}" if np.isfinite(value) else f"{key} –")
    return ", ".join(parts)
