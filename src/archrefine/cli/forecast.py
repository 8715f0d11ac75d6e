"""`archrefine forecast`: fit the simulator to a run's first cycles and predict the rest."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from archrefine.cli.common import (
    ForceOpt,
    OutOpt,
    app,
    console,
    one_line_errors,
    out_console,
    progress_bar,
)


@app.command()
@one_line_errors
def forecast(
    run: Annotated[Path, typer.Argument(help="A run or loop directory, or a trajectory CSV.")],
    fit_cycles: Annotated[int, typer.Option(help="Fit cycles 1..N, forecast the rest.")] = 6,
    cycles: Annotated[
        int | None, typer.Option(help="Forecast to this cycle (default: the run's own length).")
    ] = None,
    generator: Annotated[
        str,
        typer.Option(
            help="auto, paper, learned or paper,learned (several: chosen by held-out error; "
            "auto adds learned where it writes the run's space)"
        ),
    ] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the fitting simulations.")] = 0,
    out: OutOpt = None,
    force: ForceOpt = False,
) -> None:
    """Fit the simulator to a run's first cycles; predict the rest with 80% bands."""
    from archrefine.core.config import Config, ConfigError
    from archrefine.core.store import close_run, default_dir, open_run
    from archrefine.experiments import forecast as fc
    from archrefine.experiments import forecast_io

    Config().with_overrides({"seed": seed})  # --seed checked as a config checks it (≥ 0)
    if out is not None and out.resolve() == run.resolve():  # --force would replace the run
        raise ConfigError(f"--out {out}: that is the run being forecast; choose another --out")
    observed = forecast_io.load_observed(run, cycles=cycles)
    generators = fc.generators_for(observed, generator)
    fc.check_request(observed, fit_cycles)  # bad requests fail before the directory is made
    out = out or default_dir("forecast")
    meta = {"input": str(run), "fit_cycles": fit_cycles, "generator": generator, "seed": seed}
    open_run(out, force=force, kind="forecast", meta=meta, fresh=True)
    started = time.time()
    with progress_bar() as bar:
        task = bar.add_task("forecast", total=None)

        def note(message: str) -> None:
            bar.update(task, description=message, advance=1)

        result = fc.forecast(
            observed, fit_cycles=fit_cycles, generators=generators, seed=seed, on_progress=note
        )
    forecast_io.add_hindcast_noise(result, run)
    files = forecast_io.write_forecast(out, result)
    close_run(out, files=files, started=started)
    out_console.print(forecast_io.summary_lines(result))
    console.print(f"wrote {out}/ in {time.time() - started:.1f} s")
