"""`archrefine intervene`: search the interventions' settings; write the Pareto front."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from archrefine.cli.common import (
    ForceOpt,
    OutOpt,
    SetOpt,
    app,
    console,
    one_line_errors,
    out_console,
    progress_bar,
)
from archrefine.core.config import ConfigError, load_config

MAX_BUDGET = 100_000  # Optuna trials: each one a simulation
MAX_SEEDS = 1_000  # seeds per measurement


@app.command()
@one_line_errors
def intervene(
    config: Annotated[
        Path | None, typer.Argument(help="Base config TOML (defaults if omitted).")
    ] = None,
    budget: Annotated[
        int, typer.Option(help="Optuna trials (simulations on the search seed).")
    ] = 40,
    set_: SetOpt = None,
    search_seed: Annotated[
        int, typer.Option(help="Seed the search runs on (not reported).")
    ] = 1000,
    report_seed: Annotated[
        int, typer.Option(help="Fresh seed the front is re-measured on.")
    ] = 5000,
    sampler_seed: Annotated[int, typer.Option(help="Seed of the NSGA-II sampler.")] = 0,
    seeds: Annotated[
        int,
        typer.Option(
            help="Seeds per measurement (from each of the two seeds); objectives "
            "are means over them."
        ),  # fmt: skip
    ] = 1,
    out: OutOpt = None,
    force: ForceOpt = False,
) -> None:
    """Search intervention settings (Optuna NSGA-II): diversity kept, validity, best fitness.

    Writes pareto.json (the front, re-measured on a fresh seed), trials.parquet, pareto.png and
    best.toml (the front member chosen on the search seed)."""
    from archrefine.core.store import atomic_write_text, close_run, default_dir, open_run
    from archrefine.experiments import intervene as iv

    for name, value, most in (("--budget", budget, MAX_BUDGET), ("--seeds", seeds, MAX_SEEDS)):
        if value < 1:
            raise ConfigError(f"{name}: must be at least 1 (got {value})")
        if value > most:  # a huge one would run for ever, not fail
            raise ConfigError(f"{name}: must be at most {most:,} (got {value})")
    if abs(search_seed - report_seed) < seeds:
        raise ConfigError(
            "--report-seed must differ from --search-seed by at least --seeds: the front is "
            "re-measured on seeds the search never saw"
        )
    if min(search_seed, report_seed) < 0:
        raise ConfigError("--search-seed and --report-seed must not be negative")
    if max(search_seed, report_seed) >= 2**63:  # a config's seed bound, checked before --out
        raise ConfigError("--search-seed and --report-seed must be below 2**63")
    if not 0 <= sampler_seed < 2**32:  # NSGA-II's numpy RandomState takes no other seed
        raise ConfigError(f"--sampler-seed: must be from 0 to 2**32 - 1 (got {sampler_seed})")
    base = load_config(config, list(set_ or []))
    out = out or default_dir("intervene")
    meta = {
        "budget": budget,
        "search_seed": search_seed,
        "report_seed": report_seed,
        "seeds": seeds,
    }
    open_run(out, force=force, kind="intervene", meta=meta, fresh=True)
    atomic_write_text(out / "config.toml", base.to_toml())
    started = time.time()
    with progress_bar() as bar:
        task = bar.add_task(f"{budget} trials", total=budget)
        result = iv.search(
            base,
            budget,
            search_seed=search_seed,
            report_seed=report_seed,
            sampler_seed=sampler_seed,
            seeds=seeds,
            on_trial=lambda done: bar.update(task, completed=done),
        )
    files = iv.write(out, base, result)
    close_run(out, files=["config.toml", *files], started=started)
    for line in iv.summary_lines(result):
        out_console.print(line)
    console.print(f"wrote {out}/ in {time.time() - started:.1f} s")
