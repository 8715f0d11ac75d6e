"""A run's trajectory.png and report.html, made by two helper processes while the loop runs.

`archrefine run` spends ~0.45 s of CPU importing matplotlib, ~0.2 s drawing the figure and
~0.1 s building report.html (docs/performance.md). A helper forked before the loop (before
any thread of it starts) imports pandas, forks a second helper from itself, and then each
imports its own modules on the other core while the loop runs (matplotlib for the first,
plotly and the report for the second: nothing is imported twice). When the loop ends, the
first draws the figure from the columns it is sent (the same `plots.trajectory` call on the
same frame, so the same file) while the main process writes metrics.parquet; the second then
builds report.html meanwhile from the files and the run.json the main process is about to
write (`store.closed_info`), and writes the page once run.json says exactly that. The main
process waits for each answer, so the files are there, and in the same order, when `run`
returns. Wherever a helper cannot do its part (no fork on this platform, it died, it raised),
the main process does that part itself, so an error is reported exactly as without helpers.
The helpers ignore Ctrl-C; the main process ends them (after any write they have started)
whenever `run` stops.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archrefine.cli.common import write_report

if TYPE_CHECKING:
    import numpy as np

    from archrefine.sim.loop import Result

DONE = "done"


class Beside:
    """The helper processes (a context manager) for one run directory, named by `draw`; with
    `start` false (nothing to draw) or where fork is not the platform's way, no helper: every
    call then does its work in this process."""

    def __init__(self, *, start: bool = True):
        self.out: Path | None = None
        self.proc: Any = None
        self.conns: dict[str, Any] = {}  # "figure", "report": this process's pipe ends
        self.waiting = False  # a request sent and not yet answered
        self.answered = False  # the helpers have imported and answered: they end on request
        if start and sys.platform.startswith("linux"):  # fork: no new interpreter, no imports
            ctx = mp.get_context("fork")
            ends = {what: ctx.Pipe() for what in ("figure", "report")}
            self.conns = {what: mine for what, (mine, _) in ends.items()}
            args = (ends["figure"][1], ends["report"][1], list(self.conns.values()))
            self.proc = ctx.Process(target=_serve, args=args, daemon=True)
            self.proc.start()
            for _, theirs in ends.values():
                theirs.close()

    def __enter__(self) -> Beside:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def draw(self, out: Path, columns: dict[str, np.ndarray]) -> None:
        """Start drawing `out`/trajectory.png of a result's `columns` (the helper makes them a
        DataFrame: this process need not import pandas); `figure` waits for it."""
        self.out = Path(out)
        self._send("figure", (self.out, columns))

    def figure(self, result: Result) -> None:
        """Wait for trajectory.png from `draw`; draw it here where the helper could not."""
        assert self.out is not None, "draw names the directory first"
        if self._answer("figure") != DONE:
            from archrefine.experiments import plots  # matplotlib: ~0.4 s of import

            plots.trajectory(result.metrics, self.out / "trajectory.png")

    def prepare(self, info: dict[str, Any]) -> None:
        """Start building report.html from the directory's files and `info`, the run.json
        about to be written; `report`, once it is, writes the page."""
        assert self.out is not None, "draw names the directory first"
        self._send("report", (self.out, info), answer=False)

    def report(self) -> None:
        """Write report.html for the closed run (a failure is one warning line, as before)."""
        assert self.out is not None, "draw names the directory first"
        self._send("report", None)
        answer = self._answer("report")
        if answer is None:
            write_report(self.out)
        elif answer != DONE:
            print(f"warning: report.html not written: {answer}", file=sys.stderr)

    def close(self) -> None:
        """End the helpers: one writing a file finishes it, sees its pipe close and exits; so
        do both after a run (the first waits for the second: their CPU time is counted in
        this process's children's); one with nothing asked of it (still importing, when the
        loop stops early) is ended at once, so an error is not delayed."""
        for conn in self.conns.values():
            conn.close()
        self.conns = {}
        if self.proc is None:
            return
        if self.waiting or self.answered:
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()  # the report helper, its child, sees its pipe close and ends
            self.proc.join()
        self.proc = None

    def _send(self, what: str, request: object, answer: bool = True) -> None:
        if what in self.conns:
            with contextlib.suppress(OSError):  # it died (killed): `_answer` says so
                self.conns[what].send(request)
                self.waiting |= answer

    def _answer(self, what: str) -> str | None:
        """A helper's answer: DONE, a report's one-line problem, or None where the helper is
        gone or failed (the caller then does the work itself, and asks it nothing more)."""
        if what not in self.conns:
            return None
        try:
            answer = self.conns[what].recv()
        except (EOFError, OSError):
            answer = None
        self.waiting = False
        if answer is None:
            self.conns.pop(what).close()
        else:
            self.answered = True
        return answer


def _serve(figure, report, theirs) -> None:  # pragma: no cover - runs in the forked helper
    """The figure helper: import pandas, fork the report helper, import matplotlib while the
    loop runs, then draw what is asked; None answers what it could not do (the main process
    then draws it and reports any error)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    for conn in theirs:  # the main process's ends, inherited: closed, so its closing ends us
        conn.close()
    try:
        import pandas as pd
    except Exception:  # noqa: BLE001  (the main process imports it itself and says why)
        pd = None
    child = 0
    with contextlib.suppress(OSError):  # no second process: the main process writes the report
        child = os.fork()
        if child == 0:
            figure.close()  # else the main process would not see this helper's end
            try:
                _serve_report(report)
            finally:
                os._exit(0)
    report.close()
    try:
        from archrefine.experiments import plots
    except Exception:  # noqa: BLE001
        plots = None
    try:
        while True:
            out, columns = figure.recv()
            answer = None
            if pd is not None and plots is not None:
                try:
                    plots.trajectory(pd.DataFrame(columns), out / "trajectory.png")
                    answer = DONE
                except Exception:  # noqa: BLE001  (the main process redraws, and reports it)
                    pass
            figure.send(answer)
    except (EOFError, OSError):  # the main process is done with it (or gone)
        pass
    finally:
        if child:
            with contextlib.suppress(OSError):
                os.waitpid(child, 0)


def _serve_report(conn) -> None:  # pragma: no cover - runs in the forked helper's child
    """The report helper: import the report while the loop runs; build the page when told the
    run.json to come, write it when told that run.json is written."""
    try:
        from archrefine.core.store import atomic_write_text
        from archrefine.report import html
    except Exception:  # noqa: BLE001
        html = None
    page: str | Exception | None = None
    try:
        while True:
            request = conn.recv()
            if request is not None:  # (directory, info): build
                out, info = request
                try:
                    page = html.build(out, info) if html is not None else None
                except Exception as err:  # noqa: BLE001  (reported as one line when asked)
                    page = err
                continue
            answer = None
            if isinstance(page, Exception):
                answer = html.problem(page)
            elif page is not None:
                try:
                    atomic_write_text(out / html.FILE, page)
                    answer = DONE
                except Exception as err:  # noqa: BLE001
                    answer = html.problem(err)
            conn.send(answer)
    except (EOFError, OSError):
        pass
