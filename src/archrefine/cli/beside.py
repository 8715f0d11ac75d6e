"""A run's trajectory.png and report.html, drawn by a second process while the loop runs.

`archrefine run` spends ~0.45 s of CPU importing matplotlib and ~0.25 s drawing the figure
(docs/performance.md). A helper forked before the loop imports the plotting and report modules
on the other core while the loop runs, then draws the figure from the metrics it is sent (the
same `plots.trajectory` call on the same frame, so the same file) while the main process writes
metrics.parquet, and writes report.html once run.json says the run is complete. The main
process waits for each answer, so the files are there, and in the same order, when `run`
returns. Wherever the helper cannot do its part (no fork on this platform, it died, it raised),
the main process does that part itself, so an error is reported exactly as without the helper.
The helper ignores Ctrl-C; the main process ends it (after any write it has started) whenever
`run` stops.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from archrefine.cli.common import write_report

DONE = "done"


class Beside:
    """The helper process for one run directory `out` (a context manager); with `start`
    false (nothing to draw) or where fork is not the platform's way, no helper: every call then
    does its work in this process."""

    def __init__(self, out: Path, *, start: bool = True):
        self.out = Path(out)
        self.proc: Any = None
        if start and sys.platform.startswith("linux"):  # fork: no new interpreter, no imports
            ctx = mp.get_context("fork")
            self.conn, child = ctx.Pipe()
            self.proc = ctx.Process(target=_serve, args=(child, self.conn, self.out), daemon=True)
            self.proc.start()
            child.close()

    def __enter__(self) -> Beside:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def draw(self, metrics: pd.DataFrame) -> None:
        """Start drawing trajectory.png for `metrics` in the helper; `figure` waits for it."""
        self._send(metrics)

    def figure(self, metrics: pd.DataFrame) -> None:
        """Wait for trajectory.png from `draw`; draw it here where the helper could not."""
        if self._answer() != DONE:
            from archrefine.experiments import plots  # matplotlib: ~0.4 s of import

            plots.trajectory(metrics, self.out / "trajectory.png")

    def report(self) -> None:
        """Write report.html for the closed run (a failure is one warning line, as before)."""
        self._send("report")
        answer = self._answer()
        if answer is None:
            write_report(self.out)
        elif answer != DONE:
            print(f"warning: report.html not written: {answer}", file=sys.stderr)

    def close(self) -> None:
        """End the helper: it finishes a file it is writing, sees the pipe close and exits."""
        if self.proc is None:
            return
        self.conn.close()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()
        self.proc = None

    def _send(self, request: object) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError):  # it died (killed): `_answer` says so
                self.conn.send(request)

    def _answer(self) -> str | None:
        """The helper's answer: DONE, a report's one-line problem, or None where the helper is
        gone or failed (the caller then does the work itself)."""
        if self.proc is None:
            return None
        try:
            answer = self.conn.recv()
        except (EOFError, OSError):
            answer = None
        if answer is None:
            self.close()
        return answer


def _serve(conn, parent, out: Path) -> None:  # pragma: no cover - runs in the forked helper
    """The helper: import while the loop runs, then draw and write what is asked, in order;
    None answers what it could not do (the main process then does it and reports any error)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    parent.close()  # the main process's end, inherited: closed, so its closing ends the helper
    try:
        from archrefine.experiments import plots
        from archrefine.report import html
    except Exception:  # noqa: BLE001  (the main process imports them itself and says why)
        plots = html = None
    try:
        while True:
            request = conn.recv()
            answer = None
            if plots is not None and isinstance(request, pd.DataFrame):
                try:
                    plots.trajectory(request, out / "trajectory.png")
                    answer = DONE
                except Exception:  # noqa: BLE001  (the main process redraws, and reports it)
                    pass
            elif html is not None and request == "report":
                answer = html.write_safely(out) or DONE
            conn.send(answer)
    except (EOFError, OSError):  # the main process is done with it (or gone)
        pass
