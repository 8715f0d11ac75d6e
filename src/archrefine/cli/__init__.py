"""The `archrefine` command: one typer app, one module per command group.

May import every layer; nothing imports it. `main` is the console-script entry point.
"""

from archrefine.cli import real, sweep  # noqa: F401  (registers their commands on the app)
from archrefine.cli.commands import app, main

__all__ = ["app", "main"]
