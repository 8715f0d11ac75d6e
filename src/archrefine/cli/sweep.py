"""Commands for many runs at once: `sweep`, `runs`, `compare` (registered on `cli.app`)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from archrefine.cli.common import (
    ForceOpt,
    OutOpt,
    TrackOpt,
    app,
    console,
    one_line_errors,
    out_console,
    output_file,
    progress_bar,
    tracker,
    write_report,
)
from archrefine.core.config import ConfigError, load_config


@app.command()
@one_line_errors
def sweep(
    config: Annotated[
        Path | None, typer.Argument(help="Base config TOML (defaults if omitted).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="A grid axis: dotted.key=value1,value2,... (repeatable)."),
    ] = None,
    backend: Annotated[str, typer.Option(help="Where points run: local or ray.")] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: start a local Ray instance).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Processes (local) or Ray CPUs (default: one per core).")
    ] = None,
    out: OutOpt = None,
    force: ForceOpt = False,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the sweep in this directory: finished points are kept."),
    ] = None,
    track: TrackOpt = None,
) -> None:
    """Run a grid of configurations; write one sub-run per point, combined metrics, a figure."""
    from archrefine.core.store import StoreError, default_dir, expect_kind
    from archrefine.experiments import sweep as sw

    if workers is not None and workers < 1:  # 0 or less would silently mean "one per core"
        raise ConfigError(f"--workers: must be at least 1 (got {workers})")
    if address is not None and backend != "ray":  # else silently run here, not on the cluster
        raise ConfigError(f"--address {address}: a Ray cluster's address needs --backend ray")
    if resume is not None:
        if config is not None:
            raise ConfigError("--resume uses the sweep's own config.toml: drop CONFIG")
        expect_kind(resume, "sweep")  # a run or loop directory says what it holds
        try:
            saved = json.loads((resume / "sweep.json").read_text())
        except (OSError, ValueError):
            raise StoreError(f"{resume}: no sweep to resume (no readable sweep.json)") from None
        grid = saved.get("grid", {}) if isinstance(saved, dict) else None
        if not set_ and not (
            isinstance(grid, dict) and all(isinstance(v, list) for v in grid.values())
        ):
            raise StoreError(
                f"{resume / 'sweep.json'}: not a sweep record (its grid should map each key to "
                "a list of values); pass the grid again with --set"
            )
        base = load_config(resume / "config.toml")
        sets: list[str] | dict = list(set_) if set_ else grid
        if set_ and isinstance(grid, dict) and grid:  # a grid of its own: only that one resumes
            named = {p.name for p in sw.expand(base, sets)}
            if named != {p.name for p in sw.expand(base, grid)}:
                raise ConfigError(
                    f"--resume {resume}: --set gives another grid than the sweep's own "
                    f"({', '.join(f'{k}={v}' for k, v in grid.items())}); drop --set to "
                    "continue it, or sweep into a new --out"
                )
        out = resume
    else:
        base = load_config(config)
        sets = list(set_ or [])
        out = out or default_dir("sweep")
    points = sw.expand(base, sets)
    tracking = tracker(base, track)
    with progress_bar() as progress:
        task = progress.add_task(f"{len(points)} points ({backend})", total=len(points))
        counts = {"ran": 0, "skipped": 0}

        def advance(point, what: str) -> None:
            counts[what] += 1
            progress.advance(task)

        began = time.time()
        frame = sw.run_sweep(
            base, points, out, backend=backend, address=address, workers=workers,
            on_point=advance, force=force, resume=resume is not None,
        )  # fmt: skip
    write_report(out)
    _print_means(sw.final_means(frame), "Final cycle, mean over trials")
    console.print(
        f"wrote {out}/ in {time.time() - began:.1f} s "
        f"({counts['ran']} points ran, {counts['skipped']} already finished)",
        soft_wrap=True,
    )
    tracking.log(out)


def _cell(value) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "" if missing else f"{value:.3f}"


def _print_means(means, title: str) -> None:
    from archrefine.core.metrics import METRICS  # numpy: not at start-up

    table = Table(title=title)
    table.add_column("point", overflow="fold")
    for key in METRICS:
        table.add_column(key, justify="right")
    for name, row in means.iterrows():
        table.add_row(str(name), *(_cell(row[k]) for k in METRICS))
    out_console.print(table)


@app.command()
@one_line_errors
def runs(
    directory: Annotated[Path, typer.Argument(help="Where to look for runs.")] = Path("runs"),
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the records as JSON (pandas.read_json).")
    ] = False,
) -> None:
    """List the runs and sweeps under a directory: kind, date, status, config, final metrics."""
    from archrefine.core.catalog import scan
    from archrefine.core.formats import dumps_strict
    from archrefine.core.metrics import METRICS

    records = scan(directory)
    if as_json:
        print(dumps_strict(records, indent=1))
        return
    table = Table(title=f"Runs under {directory}", box=box.SIMPLE_HEAD, show_edge=False, padding=0)
    table.add_column("name", overflow="fold", min_width=6)
    table.add_column("kind", no_wrap=True)
    table.add_column("date", min_width=10)
    table.add_column("status", overflow="fold", min_width=8)
    table.add_column("config", no_wrap=True)
    for key in METRICS:
        table.add_column(key, justify="right", no_wrap=True)
    for r in records:
        date = (r["date"] or "")[:16].replace("T", " ")
        status = r["status"] or ""
        style = "green" if status == "finished" else "red"
        style = "yellow" if status.startswith(("running", "unknown")) else style
        table.add_row(
            r["name"], r["kind"] or "", date, f"[{style}]{status}[/]", (r["config_hash"] or "")[:7],
            *(_cell(r[k]) for k in METRICS),
        )  # fmt: skip
    out_console.print(table)
    n = len(records)
    console.print(f"{n} run{'' if n == 1 else 's'} under {directory}/", soft_wrap=True)


@app.command()
@one_line_errors
def compare(
    runs_: Annotated[
        list[Path], typer.Argument(metavar="RUN...", help="Run, reproduce or sweep directories.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Figure to write.")] = Path(
        "compare.png"
    ),
) -> None:
    """Overlay the runs' mean trajectories (every point of a sweep) in one figure."""
    from archrefine.core.catalog import trajectories
    from archrefine.experiments import plots

    overlaid: dict = {}
    for path in runs_:
        for label, frame in trajectories(path, prefix=len(runs_) > 1).items():
            key, n = label, 1
            while key in overlaid:  # two runs with the same directory name
                n += 1
                key = f"{label} ({n})"
            overlaid[key] = frame
    with output_file(out, ".png"):
        plots.overlay(overlaid, out)
    console.print(f"wrote {out} ({len(overlaid)} trajectories)", soft_wrap=True)
