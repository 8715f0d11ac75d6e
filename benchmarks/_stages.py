"""Where one `archrefine run` process spends its time, stage by stage (run by reproduce.py).

    python benchmarks/_stages.py run --trials 1000 --set schedule.kind=cosine --out DIR --force

Runs the `archrefine` command in this process with timers around the library calls the `run`
command makes (they are looked up at call time, so wrapping them changes nothing else), and
prints one JSON object: per stage, wall and CPU seconds. The stages follow the command's order:

* `imports`: from this script's start to the loop (the CLI, the config, numpy, the
  simulator's modules, not pandas; the run directory and config.toml);
* `simulate`: the loop in a fresh process, numba's import and kernel load included;
* `metrics`: metrics.parquet; `figure`: trajectory.png: the wait for the helper process that
  `run` forks before the loop (`archrefine.cli.beside`: it imports pandas and matplotlib
  while the loop runs, then draws), or the drawing itself where it runs in this process, and
  the run.json to come (which the second helper builds report.html from meanwhile);
* `close`: run.json; `report`: report.html (the second helper's, waited for), the last lines
  printed and the exit callbacks.

The command ends as the console script does (`archrefine.cli.main`: exit callbacks, then the
process ends without the interpreter's teardown). The interpreter's start-up and that end are
what the parent measures beyond `total`; `helper` is the CPU of the helper processes (this
process's waited-for children), on the other core.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import json
import resource
import sys
import time

START = time.perf_counter()
MARKS: list[tuple[str, float, float]] = []


def mark(name: str) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    MARKS.append((name, time.perf_counter() - START, usage.ru_utime + usage.ru_stime))


def wrap(module: str, name: str) -> None:
    mod = importlib.import_module(module)
    inner = getattr(mod, name)

    @functools.wraps(inner)
    def timed(*args, **kwargs):
        mark(f"before {name}")
        try:
            return inner(*args, **kwargs)
        finally:
            mark(f"after {name}")

    setattr(mod, name, timed)


def main() -> None:
    mark("start")
    from archrefine.cli import main as archrefine  # the commands, registered

    for module, name in (
        ("archrefine.sim.loop", "simulate"),
        ("archrefine.core.store", "write_parquet"),
        ("archrefine.core.store", "close_run"),
    ):
        wrap(module, name)
    atexit.register(report)  # the console script runs the exit callbacks, then ends at once
    sys.argv = ["archrefine", *sys.argv[1:]]
    archrefine()


def report() -> None:
    """Print the stages as JSON, once the command is done (nothing where it failed)."""
    mark("end")
    at = {name: (wall, cpu) for name, wall, cpu in MARKS}
    if "after close_run" not in at:
        return
    edges = [
        ("imports", "start", "before simulate"),
        ("simulate", "before simulate", "after simulate"),
        ("metrics", "before write_parquet", "after write_parquet"),
        ("figure", "after write_parquet", "before close_run"),
        ("close", "before close_run", "after close_run"),
        ("report", "after close_run", "end"),
    ]
    stages = {
        name: {"wall": at[b][0] - at[a][0], "cpu": at[b][1] - at[a][1]} for name, a, b in edges
    }
    stages["total"] = {"wall": at["end"][0], "cpu": at["end"][1]}  # CPU: since the process began
    stages["start"] = {"cpu": at["start"][1]}  # the interpreter's start-up, before this script
    helper = resource.getrusage(resource.RUSAGE_CHILDREN)
    stages["helper"] = {"cpu": helper.ru_utime + helper.ru_stime}
    print(json.dumps(stages))


if __name__ == "__main__":
    main()
