"""More bad input at the command line: each is one line naming the problem (exit status 2, no
traceback), made before any output directory, and what a run already wrote is left as it was."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from archrefine.cli import app


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, *expected: str) -> str:
    """The single `error: ...` line of a failed command (no traceback, exit status 2)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and all(e in lines[0] for e in expected), lines[0]
    return lines[0]


def checksums(directory: Path) -> dict[str, str]:
    return {
        p.relative_to(directory).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A finished 4-cycle run of 3 trials, never changed by a test (copy it first)."""
    out = tmp_path_factory.mktemp("base") / "run"
    result = invoke("run", "--trials", "3", "--set", "loop.cycles=4", "--no-figures", "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def run_copy(base, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(base, copy)
    return copy


def test_a_config_file_that_is_binary_a_directory_or_a_symlink_loop_is_one_line(tmp_path):
    garbage = tmp_path / "garbage.toml"
    garbage.write_bytes(b"\xff\xfe\x00\x81 not text")
    loop = tmp_path / "loop.toml"
    loop.symlink_to(tmp_path / "other.toml")
    (tmp_path / "other.toml").symlink_to(loop)
    one_line_error(invoke("config", garbage), "garbage.toml: not valid TOML")
    one_line_error(invoke("config", tmp_path), "cannot read config (Is a directory)")
    one_line_error(invoke("run", loop, "--out", tmp_path / "o"), "loop.toml: cannot read config")
    assert not (tmp_path / "o").exists()


def _corrupt(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    if kind == "text":
        return frame.assign(validity=frame.validity.astype(str))
    if kind == "nan cycle":
        return frame.assign(cycle=frame.cycle.astype(float).where(frame.index != 1))
    if kind == "negative cycle":
        return frame.assign(cycle=frame.cycle - 2)
    if kind == "fractional cycle":
        return frame.assign(cycle=frame.cycle + 0.5)
    if kind == "no rows":
        return frame.iloc[:0]
    if kind == "infinite":
        return frame.assign(fitness=np.inf)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("text", "validity holds"),
        ("nan cycle", "cycle must be whole numbers"),
        ("negative cycle", "cycle must be whole numbers"),
        ("fractional cycle", "cycle must be whole numbers"),
        ("no rows", "no rows"),
        ("infinite", "fitness holds an infinite value"),
    ],
)
def test_a_corrupt_metrics_file_is_one_line_for_every_reader(run_copy, tmp_path, kind, said):
    metrics = run_copy / "metrics.parquet"
    _corrupt(pd.read_parquet(metrics), kind).to_parquet(metrics)
    before = checksums(run_copy)
    for args in (
        ["plot", run_copy],
        ["report", run_copy],
        ["compare", run_copy, "--out", tmp_path / "c.png"],
        ["forecast", run_copy, "--fit-cycles", "2", "--out", tmp_path / "f"],
    ):
        one_line_error(invoke(*args), "corrupt metrics file", said)
    assert checksums(run_copy) == before
    assert not (tmp_path / "f").exists() and not (tmp_path / "c.png").exists()
    listed = invoke("runs", run_copy, "--json")  # a listing shows it unreadable, never fails
    assert listed.exit_code == 0, listed.output


def test_forecast_of_a_run_whose_validity_is_all_nan_is_no_traceback(run_copy, tmp_path):
    metrics = run_copy / "metrics.parquet"
    pd.read_parquet(metrics).assign(validity=np.nan).to_parquet(metrics)
    result = invoke("forecast", run_copy, "--fit-cycles", "3", "--out", tmp_path / "f")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "f" / "forecast.json").is_file()


def test_an_out_that_cannot_hold_a_run_is_one_line(tmp_path, base):
    a_file = tmp_path / "a_file"
    a_file.write_text("kept\n")
    small = ["--trials", "2", "--set", "loop.cycles=2", "--no-figures"]
    one_line_error(invoke("run", *small, "--out", a_file / "sub"), "cannot hold the run")
    one_line_error(invoke("run", *small, "--out", tmp_path / ("x" * 300)), "cannot hold the run")
    one_line_error(invoke("report", base, "--out", tmp_path), "cannot write it there")
    one_line_error(invoke("report", base, "--out", a_file / "r.html"), "a folder on its path")
    one_line_error(invoke("compare", base, "--out", a_file / "c.png"), "a folder on its path")
    assert a_file.read_text() == "kept\n"


def test_plot_takes_the_metrics_file_itself(run_copy):
    result = invoke("plot", run_copy / "metrics.parquet")
    assert result.exit_code == 0, result.output
    assert (run_copy / "trajectory.png").is_file()


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("cycle,validity\n", "no per-cycle rows"),
        ("cycle,validity\nall,0.5\n", "no per-cycle rows"),
        ("cycle,validity\n1e30,0.1\n2,0.2\n3,0.3\n", "cycle must be whole numbers from 1"),
    ],
)
def test_a_trajectory_without_usable_cycles_is_one_line(tmp_path, text, said):
    csv = tmp_path / "t.csv"
    csv.write_text(text)
    out = tmp_path / "o"
    one_line_error(invoke("calibrate", csv, "--trials", "2", "--out", out), "t.csv: ", said)
    one_line_error(invoke("forecast", csv, "--fit-cycles", "2", "--out", out), "t.csv: ", said)
    assert not out.exists()


def test_a_directory_given_as_the_trajectory_is_one_line(tmp_path):
    one_line_error(invoke("calibrate", tmp_path, "--out", tmp_path / "o"), "Is a directory")


def test_forecast_checks_its_seed_and_never_writes_over_its_own_run(run_copy, tmp_path):
    out = tmp_path / "f"
    one_line_error(invoke("forecast", run_copy, "--seed", "-1", "--out", out), "seed")
    assert not out.exists()
    before = checksums(run_copy)
    forced = invoke("forecast", run_copy, "--fit-cycles", "2", "--out", run_copy, "--force")
    one_line_error(forced, "the run being forecast")
    assert checksums(run_copy) == before


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--sampler-seed", "-1", "--sampler-seed"),
        ("--sampler-seed", str(2**32), "--sampler-seed"),
        ("--search-seed", str(2**70), "below 2**63"),
    ],
)
def test_intervene_checks_its_seeds_before_making_the_directory(tmp_path, option, value, said):
    out = tmp_path / "i"
    args = ["intervene", "--budget", "2", "--set", "loop.cycles=2", option, value, "--out", out]
    one_line_error(invoke(*args), said)
    assert not out.exists()


def test_sweep_refuses_fewer_than_one_worker(tmp_path):
    out = tmp_path / "s"
    result = invoke("sweep", "--set", "seed=0,1", "--workers", "0", "--out", out)
    one_line_error(result, "--workers: must be at least 1")
    assert not out.exists()


def test_a_config_error_names_the_file_it_is_in(tmp_path):
    """A run's own config.toml gone bad (read again by `--resume`) or a config given on the
    command line: the one-line error says which file is wrong, not only which key."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[loop]\npopulation = -3\n")
    result = invoke("run", bad, "--out", tmp_path / "o")
    one_line_error(result, f"{bad}: loop.population", "greater than or equal to 2")


def console(*args: str) -> subprocess.CompletedProcess:
    """The installed entry point as a user runs it (`python -m archrefine` calls the same
    `main`), not CliRunner, which never goes through `main`."""
    cmd = [sys.executable, "-m", "archrefine", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--no-such-option"], ["archrefine run", "No such option: --no-such-option"]),
        (["run", "--trials", "many"], ["'--trials'", "valid integer"]),
        (["run", "a.toml", "b.toml"], ["unexpected extra argument"]),
        (["forecast"], ["archrefine forecast", "Missing argument"]),
        (["--no-such-option"], ["No such option"]),
        (["no-such-command"], ["No such command"]),
    ],
)
def test_usage_errors_are_one_line_at_the_console(args: list[str], expected: list[str]) -> None:
    done = console(*args)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and not done.stdout, done
    assert lines[0].startswith("error: ") and "--help" in lines[0], lines
    assert all(e in lines[0] for e in expected), lines


def test_the_console_still_helps_runs_and_reports_errors(tmp_path: Path) -> None:
    bare = console()  # no arguments: the help, as before
    assert bare.returncode == 2 and "Usage" in bare.stdout + bare.stderr, bare
    helped = console("run", "--help")
    assert helped.returncode == 0 and "--trials" in helped.stdout, helped
    ran = console("run", "--trials", "2", "--set", "loop.cycles=2", "--no-figures",
                  "--out", tmp_path / "r")  # fmt: skip
    assert ran.returncode == 0 and (tmp_path / "r" / "metrics.parquet").exists(), ran
    bad = console("run", "--set", "loop.population=-1", "--out", tmp_path / "bad")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad
