"""The helper processes that draw a run's figure and build its report beside the loop
(cli/beside.py), and `archrefine run`'s main process, which imports neither pandas nor
matplotlib when they do."""

from __future__ import annotations

import multiprocessing as mp
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from archrefine import Config, simulate
from archrefine.cli import app
from archrefine.cli.beside import Beside
from archrefine.core.store import close_run, closed_info, open_run, write_parquet
from archrefine.experiments import plots
from archrefine.report import html

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork: Linux only")


@pytest.fixture(scope="module")
def result():
    return simulate(Config(trials=3, seed=1))


def _run_dir(path: Path, result) -> dict:
    """A closed-to-be run directory: run.json running, metrics written; the info to close it."""
    open_run(path, force=False, kind="run", meta={"seed": 1, "trials": 3})
    (path / "config.toml").write_text(result.config.to_toml())
    write_parquet(path / "metrics.parquet", result.columns)
    return closed_info(path, files=["config.toml", "metrics.parquet"], started=0.0)


def _page(path: Path) -> str:
    return re.sub(r" on \d{4}-\d\d-\d\d \d\d:\d\d UTC from", " from", path.read_text())  # its time


def test_the_helpers_write_the_same_png_and_page_as_this_process(tmp_path: Path, result) -> None:
    run, mine = tmp_path / "run", tmp_path / "mine"
    info = _run_dir(run, result)
    mine.mkdir()
    plots.trajectory(result.metrics, mine / "trajectory.png")
    with Beside() as beside:
        helper = beside.proc
        assert helper is not None and helper.is_alive()
        beside.draw(run, result.columns)
        beside.prepare(info)  # built before run.json says complete
        beside.figure(result)
        close_run(run, info=info)
        beside.report()
    assert not helper.is_alive()  # ended on leaving the block
    assert (run / "trajectory.png").read_bytes() == (mine / "trajectory.png").read_bytes()
    html.write(run, mine / "report.html")  # now from the run.json on disk
    assert _page(run / "report.html") == _page(mine / "report.html")
    assert "complete" in (run / "report.html").read_text()
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temp file


def test_a_dead_figure_helper_leaves_the_figure_to_this_process(tmp_path: Path, result) -> None:
    info = _run_dir(tmp_path, result)
    with Beside() as beside:
        beside.proc.kill()
        beside.proc.join()
        beside.draw(tmp_path, result.columns)
        beside.prepare(info)
        beside.figure(result)  # drawn here instead
        close_run(tmp_path, info=info)
        beside.report()  # by the report helper, which outlives the one that forked it
    assert (tmp_path / "trajectory.png").stat().st_size > 10_000
    assert "<html" in (tmp_path / "report.html").read_text()[:2000].lower()


def test_a_page_that_cannot_be_built_is_one_warning_line(tmp_path: Path, result, capsys) -> None:
    with Beside() as beside:
        beside.draw(tmp_path, result.columns)  # not a run directory: no run.json, no metrics
        beside.prepare({"kind": "run"})
        beside.figure(result)
        beside.report()
    assert (tmp_path / "trajectory.png").exists()
    assert not (tmp_path / "report.html").exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("warning: report.html not written:") and "\n" not in err


def test_a_report_never_prepared_is_written_by_this_process(tmp_path: Path, result) -> None:
    info = _run_dir(tmp_path, result)
    close_run(tmp_path, info=info)
    with Beside() as beside:
        beside.draw(tmp_path, result.columns)
        beside.figure(result)
        beside.report()  # the helper has no page: this process writes it
    assert "complete" in (tmp_path / "report.html").read_text()


def test_without_start_there_is_no_helper_and_the_work_is_done_here(tmp_path, result) -> None:
    info = _run_dir(tmp_path, result)
    with Beside(start=False) as beside:
        assert beside.proc is None
        beside.draw(tmp_path, result.columns)
        beside.prepare(info)
        beside.figure(result)
        close_run(tmp_path, info=info)
        beside.report()
    assert (tmp_path / "trajectory.png").exists() and (tmp_path / "report.html").exists()


def test_a_helper_asked_nothing_is_ended_at_once() -> None:
    beside = Beside()
    helper = beside.proc
    beside.close()  # as when Ctrl-C stops the loop while the helper still imports
    assert not helper.is_alive() and beside.proc is None
    beside.close()  # twice is harmless


def test_run_writes_figure_and_report_through_the_helpers_and_ends_them(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = CliRunner().invoke(app, ["run", "--trials", "3", "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert (out / "trajectory.png").stat().st_size > 10_000
    assert "<html" in (out / "report.html").read_text()[:2000].lower()
    assert mp.active_children() == []  # the helper is gone when `run` returns


@pytest.mark.parametrize("figures", [True, False])
def test_runs_main_process_imports_neither_pandas_nor_matplotlib(tmp_path, figures) -> None:
    """The figure and page are the helpers' work, and the metrics are written from numpy
    columns: the main process would spend ~0.25 s importing pandas and ~0.45 s matplotlib."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('IMPORTED', 'pandas' in sys.modules,"
        " 'matplotlib' in sys.modules))\n"
        "from archrefine.cli import main\n"
        "main()\n"
    )
    args = ["run", "--trials", "3", "--out", str(tmp_path / "r")]
    args += [] if figures else ["--no-figures"]
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "IMPORTED False False" in done.stdout
    assert (tmp_path / "r" / "report.html").exists() == figures
    import pandas as pd

    frame = pd.read_parquet(tmp_path / "r" / "metrics.parquet")
    pd.testing.assert_frame_equal(frame, simulate(Config(trials=3)).metrics, check_exact=True)
