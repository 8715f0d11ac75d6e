"""The `archrefine` command: one typer app, one module per command group.

May import every layer; nothing imports it. `main` is the console-script entry point.
"""

from archrefine.cli import forecast, intervene, real, report, sweep, track  # noqa: F401  (register their commands)
from archrefine.cli.commands import app, main

__all__ = ["app", "main"]
