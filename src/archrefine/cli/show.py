"""Commands that show what is already there, simulating nothing: plot, config.

`plot` redraws a directory's figures from its saved metrics; `config` prints a resolved
configuration (or the key reference). Registered right after commands.py (cli/__init__.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from archrefine.cli.common import SetOpt, app, console, need_real_extra, one_line_errors
from archrefine.core.config import Config, load_config


@app.command()
@one_line_errors
def plot(directory: Annotated[Path, typer.Argument(help="A run or reproduce directory.")]) -> None:
    """Redraw a directory's figures from its saved metrics.parquet."""
    from archrefine.core.analysis import Phases
    from archrefine.core.store import read_metrics
    from archrefine.experiments import plots
    from archrefine.experiments.claims import detect
    from archrefine.experiments.reproduce import check_figures, draw

    if directory.name == "metrics.parquet" and directory.is_file():  # figures go beside it
        directory = directory.parent
    frame = read_metrics(directory)
    if "experiment" not in frame.columns:
        plots.trajectory(frame, directory / "trajectory.png")
        console.print(f"redrew {directory}/trajectory.png")
        return
    cfg = (
        load_config(directory / "config.toml") if (directory / "config.toml").exists() else Config()
    )
    check_figures(frame, cfg.schedule.kind, str(directory / "metrics.parquet"))  # before detect
    found = _saved_phases(directory / "phases.json", Phases)
    if found is None:  # none saved, or not readable as phases: found again, as they were
        found = detect(frame, cfg.schedule.kind, seed=cfg.seed)
    draw(
        directory,
        frame,
        found,
        cfg.schedule.kind,
        generator=cfg.generator.kind,
        period=cfg.schedule.period,
        named=_c1_verdict(directory / "claims.json"),
    )
    console.print(f"redrew the figures in {directory}/")


def _saved_phases(path: Path, phases: type) -> Any:
    """A directory's phases.json as `phases` (None when it cannot be read as one: missing,
    not JSON, or a field that is not what `detect` writes)."""
    try:
        found = phases(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    lists = [v for k, v in vars(found).items() if k != "min_gain"]
    numbers = [x for v in lists if isinstance(v, list) for x in v]
    if not all(isinstance(v, list) for v in lists) or not all(
        _finite(x) for x in [*numbers, found.min_gain]
    ):
        return None
    return found


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _c1_verdict(path: Path) -> bool | None:
    """C1's verdict from a directory's claims.json (None when it cannot be read)."""
    from archrefine.experiments.reproduce import phases_found

    try:
        claims = json.loads(path.read_text())
        if not isinstance(claims, list) or not all(isinstance(c, dict) for c in claims):
            return None
        found = phases_found(claims)
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return found if isinstance(found, bool) else None


@app.command("config")
@one_line_errors
def show_config(
    config: Annotated[Path | None, typer.Argument(help="Config TOML to resolve.")] = None,
    set_: SetOpt = None,
    reference: Annotated[bool, typer.Option(help="Print every key as a Markdown table.")] = False,
    loop: Annotated[bool, typer.Option(help="The real loop's config (archrefine loop).")] = False,
) -> None:
    """Print the fully resolved configuration as TOML (or the key reference)."""
    from archrefine.core.config import reference_table

    model = None
    if loop:
        need_real_extra()
        from archrefine.real.config import RealConfig

        model = RealConfig
    if reference:
        text = reference_table(model)
    else:
        text = load_config(config, list(set_ or []), model=model).to_toml()
    print(text)
