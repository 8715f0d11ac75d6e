"""Bad input at the command line, round 17 (a tester's review): `--workers 100000` forked
thousands of processes; a checkpoint damaged in place resumed into other numbers; `sweep
--resume --set` replaced a finished sweep's grid; `--force` left an earlier run's files beside
the new run's; configs past the TOML parser's limits, an unknown NAS-Bench-Graph dataset and
NK tables too large ended in tracebacks after the directory was made; metrics with a validity
of 7 or every row twice were read; `forecast` read a sweep's points as one run, and a directory
without its config as the defaults. Each is now one `error: ...` line, before anything is
written, and what was written stays as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_rough_edges_more import checksums, invoke, one_line_error

from archrefine.core.config import Config
from archrefine.core.store import StoreError, read_metrics
from archrefine.experiments import runner

SMALL = ["--trials", "2", "--set", "loop.cycles=3", "--no-figures"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 3-cycle run of 2 trials (copy it before changing)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    result = invoke("run", *SMALL, "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_reproduce_refuses_fewer_than_one_worker(tmp_path, workers) -> None:
    out = tmp_path / "rep"
    one_line_error(invoke("reproduce", "--workers", workers, "--out", out), "--workers")
    assert not out.exists()


class InlinePool:
    """A stand-in for `ProcessPoolExecutor` that records the size asked for (`asked`) and runs
    each job here, so a test sees how many processes a caller would start."""

    asked: list[int] = []

    def __init__(self, max_workers, **kwargs):
        InlinePool.asked.append(max_workers)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        from concurrent.futures import Future

        done = Future()
        done.set_result(fn(*args))
        return done


def test_no_more_processes_than_jobs_however_many_workers_are_asked(monkeypatch) -> None:
    monkeypatch.setattr(InlinePool, "asked", [])
    monkeypatch.setattr(runner, "ProcessPoolExecutor", InlinePool)
    base = Config().with_overrides({"trials": 2, "loop.cycles": 2})
    plan = {"e": {"a": {"loop.top_k": 2}, "b": {"loop.top_k": 3}}}
    frame = runner.run_plan(base, plan, workers=100_000)
    assert InlinePool.asked == [2] and set(frame["condition"]) == {"a", "b"}
    with pytest.raises(ValueError, match="at least 1"):
        runner.run_plan(base, plan, workers=0)


def test_sweep_resume_with_another_grid_is_refused_and_keeps_the_sweep(tmp_path) -> None:
    out = tmp_path / "sweep"
    sets = ["--set", "trials=2", "--set", "loop.cycles=3", "--set", "loop.top_k=2,3"]
    assert invoke("sweep", "--workers", "1", *sets, "--out", out).exit_code == 0
    before = checksums(out)
    other = invoke("sweep", "--resume", out, "--workers", "1", "--set", "loop.top_k=4,5")
    one_line_error(other, "another grid", "drop --set")
    assert checksums(out) == before
    same = invoke("sweep", "--resume", out, "--workers", "1", *sets)  # its own grid: resumes
    assert same.exit_code == 0, same.output


def test_force_removes_an_earlier_runs_outputs_and_only_those(tmp_path, finished) -> None:
    out = tmp_path / "reused"
    shutil.copytree(finished, out)
    for name in ("report.html", "candidates.sqlite", "state.json", "claims.json", "loo.csv"):
        (out / name).write_text("an earlier run's")
    (out / "generator").mkdir()
    (out / "generator" / "cycle-001.json").write_text("{}")
    (out / "notes.txt").write_text("the user's own")
    result = invoke("run", *SMALL, "--out", out, "--force")
    assert result.exit_code == 0, result.output
    left = {p.name for p in out.iterdir()}
    assert left == {"config.toml", "metrics.parquet", "checkpoint.bin", "run.json", "notes.txt"}


@pytest.mark.parametrize(
    ("value", "why"),
    [("[" * 5000 + "]" * 5000, "nested too deeply"), ("9" * 5000, "over 4,300 digits")],
)
def test_values_past_the_toml_parsers_limits_are_one_line(tmp_path, value, why) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"trials = {value}\n")
    one_line_error(invoke("config", config), str(config), why)
    out = tmp_path / "run"
    one_line_error(invoke("run", "--set", f"trials={value}", "--out", out), "--set", why)
    assert not out.exists()


def test_an_unknown_benchmark_dataset_is_refused_by_the_config(tmp_path) -> None:
    out = tmp_path / "run"
    result = invoke(
        "run", "--set", "space.kind=nasbench-graph", "--set", "space.dataset=nope", "--out", out
    )
    one_line_error(result, "space.dataset", "'nope'", "cora")
    assert not out.exists()


def test_nk_tables_too_large_are_refused_before_the_directory(tmp_path) -> None:
    out = tmp_path / "run"
    one_line_error(invoke("run", "--trials", "100000", "--out", out), "NK table entries")
    assert not out.exists()


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda f: f.assign(validity=7.0), "validity"),
        (lambda f: pd.concat([f, f]), "repeats its trial, cycle"),
    ],
)
def test_metrics_that_cannot_be_a_run_are_refused(tmp_path, finished, damage, why) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    damage(pd.read_parquet(out / "metrics.parquet")).to_parquet(out / "metrics.parquet")
    with pytest.raises(StoreError, match=why):
        read_metrics(out)
    one_line_error(invoke("forecast", out, "--out", tmp_path / "fc"), why)


def test_a_directory_where_the_metrics_file_belongs_is_named(tmp_path) -> None:
    (tmp_path / "metrics.parquet").mkdir()
    with pytest.raises(StoreError, match="not a file"):
        read_metrics(tmp_path)


def test_forecast_refuses_a_sweep_and_a_run_without_its_config(tmp_path, finished) -> None:
    sweep = tmp_path / "sweep"
    sets = ["--set", "trials=2", "--set", "loop.cycles=8", "--set", "loop.top_k=2,3"]
    assert invoke("sweep", "--workers", "1", *sets, "--out", sweep).exit_code == 0
    one_line_error(invoke("forecast", sweep, "--out", tmp_path / "f1"), "sweep", "points")
    bare = tmp_path / "bare"
    shutil.copytree(finished, bare)
    (bare / "config.toml").unlink()
    one_line_error(invoke("forecast", bare, "--out", tmp_path / "f2"), "no config.toml")
    assert not (tmp_path / "f1").exists() and not (tmp_path / "f2").exists()
    assert json.loads((bare / "run.json").read_text())["status"] == "complete"


def test_a_ray_address_that_does_not_answer_is_refused_at_once(tmp_path) -> None:
    from archrefine.sandbox.ray_backend import unreachable

    assert unreachable(None) == unreachable("auto") == unreachable("ray://") == ""
    assert unreachable("127.0.0.1:1")  # nothing listens on port 1: refused
    pytest.importorskip("ray")
    out = tmp_path / "sweep"
    result = invoke(
        "sweep", "--backend", "ray", "--address", "127.0.0.1:1", "--set", "loop.top_k=2,3",
        "--out", out,
    )  # fmt: skip
    one_line_error(result, "cannot reach Ray")  # ray.init waited minutes for such an address
    assert not out.exists()
