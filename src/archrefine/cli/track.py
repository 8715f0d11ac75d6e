"""`archrefine track DIR`: log a finished directory to MLflow (registered on `cli.app`).

What `--track mlflow` does at the end of run, reproduce, sweep and loop, for a directory made
without it, or whose tracking failed (server down): the files are complete, so nothing is lost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from archrefine.cli.common import app, one_line_errors


@app.command()
@one_line_errors
def track(
    directory: Annotated[
        Path, typer.Argument(help="A finished run, reproduce, sweep or loop directory.")
    ],
    uri: Annotated[
        str | None,
        typer.Option(help="MLflow tracking URI (default: the directory's tracking.uri)."),
    ] = None,
    experiment: Annotated[
        str | None,
        typer.Option(help="MLflow experiment (default: the directory's tracking.experiment)."),
    ] = None,
    incomplete: Annotated[
        bool,
        typer.Option(help="Log a directory whose run did not finish (as KILLED) too."),
    ] = False,
) -> None:
    """Log a finished directory to MLflow: config as params, metrics per cycle, claims, files."""
    from archrefine.report.tracking import for_directory

    tracker = for_directory(directory, uri, experiment, incomplete=incomplete)
    if tracker.log(directory) is None:
        raise typer.Exit(1)  # the warning said why
