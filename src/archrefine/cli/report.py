"""`archrefine report DIR`: rebuild a directory's report.html (registered on `cli.app`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from archrefine.cli.common import app, console, one_line_errors, output_file, report_warnings


@app.command()
@one_line_errors
def report(
    directory: Annotated[Path, typer.Argument(help="A run, reproduce, sweep or loop directory.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where to write it [DIR/report.html].")
    ] = None,
) -> None:
    """Rebuild DIR/report.html: one self-contained page (no network) with the interactive
    trajectory, phases, claims and, for a loop, every candidate's code, reason and lineage."""
    from archrefine.report.html import FILE, write

    with output_file(out or directory / FILE, ".html"), report_warnings():  # ReportErrors
        path = write(directory, out)
    console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)", soft_wrap=True)
