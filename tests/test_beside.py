"""The helper process that draws a run's figure and report beside the loop (cli/beside.py)."""

from __future__ import annotations

import multiprocessing as mp
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from archrefine import Config, simulate
from archrefine.cli import app
from archrefine.cli.beside import Beside
from archrefine.experiments import plots

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork: Linux only")


@pytest.fixture(scope="module")
def metrics():
    return simulate(Config(trials=3, seed=1)).metrics


def test_the_helper_draws_the_same_png_as_this_process(tmp_path: Path, metrics) -> None:
    (tmp_path / "mine").mkdir()
    plots.trajectory(metrics, tmp_path / "mine" / "trajectory.png")
    with Beside(tmp_path) as beside:
        helper = beside.proc
        assert helper is not None and helper.is_alive()
        beside.draw(metrics)
        beside.figure(metrics)
    assert not helper.is_alive()  # ended on leaving the block
    drawn = (tmp_path / "trajectory.png").read_bytes()
    assert drawn == (tmp_path / "mine" / "trajectory.png").read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file


def test_a_dead_helper_leaves_the_work_to_this_process(tmp_path: Path, metrics, capsys) -> None:
    with Beside(tmp_path) as beside:
        beside.proc.kill()
        beside.proc.join()
        beside.draw(metrics)
        beside.figure(metrics)  # drawn here instead
        assert beside.proc is None
        beside.report()  # written here: not a run directory, so one warning line
    assert (tmp_path / "trajectory.png").stat().st_size > 10_000
    assert "report.html not written" in capsys.readouterr().err


def test_without_start_there_is_no_helper_and_the_work_is_done_here(tmp_path, metrics) -> None:
    with Beside(tmp_path, start=False) as beside:
        assert beside.proc is None
        beside.draw(metrics)
        beside.figure(metrics)
    assert (tmp_path / "trajectory.png").exists()


def test_run_writes_figure_and_report_through_the_helper_and_ends_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = CliRunner().invoke(app, ["run", "--trials", "3", "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert (out / "trajectory.png").stat().st_size > 10_000
    assert "<html" in (out / "report.html").read_text()[:2000].lower()
    assert mp.active_children() == []  # the helper is gone when `run` returns
