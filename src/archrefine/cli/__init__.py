"""The `archrefine` command: one typer app, one module per command group.

May import every layer; nothing imports it. `main` is the console-script entry point.
"""

# the simulator's commands first: --help lists commands in the order they were registered
from archrefine.cli import commands, show  # noqa: F401  (register their commands)

# isort: split
from archrefine.cli import forecast, intervene, real, report, sweep, track  # noqa: F401  (register their commands)
from archrefine.cli.common import app, main

__all__ = ["app", "main"]
