"""Bad inputs, round 2: a damaged generator state, calibrate's --columns and --params, robustness
settings and workers, plot on partial metrics, wrong-typed candidate cells, tiny-model's output,
trajectories that are not regular files, and the messages of runs and track. Each is one line
naming the problem, before anything is written."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest
from test_rough_edges_more import invoke, one_line_error

from archrefine.core.config import Config
from archrefine.core.store import StoreError
from archrefine.experiments import robustness as rb

GOOD_CSV = "cycle,validity,mean_accuracy\n" + "".join(
    f"{c},{0.4 + 0.03 * c:.2f},{0.25 + 0.02 * c:.2f}\n" for c in range(1, 9)
)


@pytest.fixture
def good_csv(tmp_path) -> Path:
    path = tmp_path / "good.csv"
    path.write_text(GOOD_CSV)
    return path


# ---- 5a: loop --resume with a damaged generator state -----------------------------------------


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda d: os.truncate(d / "learned.npz", 100), "learned.npz"),
        (lambda d: (d / "learned.json").write_text("{"), "learned.json"),
        (lambda d: (d / "learned.json").write_text("[]"), "learned.json"),
        (lambda d: (d / "learned.json").write_text('{"seen": "x"}'), "learned.json"),
    ],
)
def test_a_damaged_learned_generator_state_is_a_store_error_naming_the_file(
    tmp_path, damage, named
):
    pytest.importorskip("torch")
    from archrefine.real.text import LearnedTextGenerator

    saved = tmp_path / "cycle-001"
    LearnedTextGenerator(seed=0).save(saved)
    assert stat.S_IMODE((saved / "learned.npz").stat().st_mode) == 0o666 & ~_umask()
    LearnedTextGenerator(seed=0).load(saved)  # whole: loads
    damage(saved)
    with pytest.raises(StoreError, match=f"{named}: not a readable generator state"):
        LearnedTextGenerator(seed=0).load(saved)


def test_a_generator_state_of_other_arrays_is_refused_naming_the_array(tmp_path):
    pytest.importorskip("torch")
    import numpy as np

    from archrefine.real.text import LearnedTextGenerator

    saved = tmp_path / "cycle-001"
    LearnedTextGenerator(seed=0).save(saved)
    with np.load(saved / "learned.npz") as state:
        arrays = dict(state)
    arrays["adam/t"] = np.zeros((3, 3))
    del arrays["count"]
    np.savez(saved / "learned.npz", **arrays)
    with pytest.raises(StoreError, match="learned.npz: .*(adam/t|count)"):
        LearnedTextGenerator(seed=0).load(saved)


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


# ---- 5b: calibrate --columns and --params ------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--columns", "validity,validity"], "--columns: validity named more than once"),
        (["--columns", "cycle"], "--columns: cycle is not a fitted column"),
        (["--params", "generator.base_logit,generator.base_logit"], "named more than once"),
        (["--params", "generator.base_logit=0:1,generator.base_logit"], "named more than once"),
        (["--params", "generator.learned.lr"], "does not use generator.learned.lr"),
        (
            ["--generator", "learned", "--params", "generator.base_logit"],
            "does not use generator.base_logit",
        ),
    ],
)
def test_calibrate_refuses_bad_columns_and_params_before_writing(
    tmp_path, good_csv, option, expected
):
    out = tmp_path / "cal"
    one_line_error(invoke("calibrate", good_csv, "--trials", "1", *option, "--out", out), expected)
    assert not out.exists()


def test_calibrate_library_refuses_repeated_and_unfitted_columns(good_csv):
    from archrefine.experiments.calibrate import CalibrationError, calibrate, free_params
    from archrefine.experiments.trajectory import load_trajectory

    frame = load_trajectory(good_csv)
    for columns in (["validity", "validity"], ["cycle"]):
        with pytest.raises(CalibrationError, match="--columns"):
            calibrate(frame, columns=columns, trials=1, max_nfev=1)
    with pytest.raises(CalibrationError, match="named more than once"):
        free_params("paper", ["generator.base_logit", "generator.base_logit"])
    with pytest.raises(CalibrationError, match="does not use"):
        free_params("paper", {"generator.learned.lr": (1e-4, 1e-2)})


# ---- 5d, 5e, 1: robustness --param twice, --resume settings, --workers -------------------------

TINY = ["--trials", "2", "--set", "loop.cycles=6", "--set", "loop.population=10", "--seeds", "1"]


def test_robustness_refuses_a_parameter_named_twice_before_running(tmp_path):
    out = tmp_path / "rb"
    args = [*TINY, "--param", "generator.base_logit", "--param", "generator.base_logit"]
    one_line_error(invoke("robustness", *args, "--out", out), "--param", "more than once")
    assert not out.exists()


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_robustness_refuses_fewer_than_one_worker(tmp_path, workers):
    out = tmp_path / "rb"
    result = invoke("robustness", *TINY, "--perturb", "0", "--workers", workers, "--out", out)
    one_line_error(result, "--workers: must be at least 1")
    assert not out.exists()


def test_robustness_never_starts_more_processes_than_jobs(tmp_path, monkeypatch):
    from test_rough_edges_round17 import InlinePool

    from archrefine.experiments import runner

    monkeypatch.setattr(InlinePool, "asked", [])
    monkeypatch.setattr(runner, "ProcessPoolExecutor", InlinePool)
    settings = rb.Settings(seeds=2, trials=2, perturb=0, trajectories=2)
    jobs, _ = rb.plan(Config().with_overrides({"loop.cycles": 4}), settings)
    rb.run_jobs(tmp_path, jobs, workers=100_000, runner=lambda config_json: [])
    assert InlinePool.asked == [len(jobs)] == [2]


@pytest.fixture
def study(tmp_path) -> Path:
    """A robustness study directory (its jobs stubbed: only the settings matter here)."""
    out = tmp_path / "rbq"
    base = Config().with_overrides({"loop.cycles": 4, "trials": 2})
    settings = rb.Settings(seeds=1, trials=2, perturb=0, trajectories=2)
    stub = lambda config_json: []  # noqa: E731
    rb.run_robustness(base, settings, out, workers=1, runner=stub, figure=False)
    return out


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"seeds": "x", "trials": 2}, "settings.json: seeds: must be an integer"),
        ({"seeds": -3}, "settings.json: seeds: must be at least 1 (got -3)"),
        ({"seeds": 1, "perturb": "big"}, "settings.json: perturb: must be in [0, 1)"),
        ({"seeds": 1, "params": "generator.base_logit"}, "settings.json: param"),
        ({"seeds": 1, "colour": 3}, "settings.json: not a robustness study's settings"),
        ([1, 2], "settings.json: not a robustness study's settings"),
    ],
)
def test_robustness_resume_names_settings_json_and_its_key(study, settings, expected):
    (study / "settings.json").write_text(json.dumps(settings))
    line = one_line_error(invoke("robustness", "--resume", study), expected)
    assert "--seeds" not in line


def test_robustness_resume_with_a_garbage_config_names_config_toml(study):
    (study / "config.toml").write_text("garbage\n")
    line = one_line_error(invoke("robustness", "--resume", study), "config.toml")
    assert "settings.json" not in line


# ---- 5h: plot on partial reproduce metrics ------------------------------------------------------


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("repro") / "rep"
    args = ["--trials", "2", "--set", "loop.cycles=4", "--set", "loop.population=10"]
    result = invoke("reproduce", *args, "--workers", "1", "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d[d.experiment != "topk"], "fig2_topk.png needs the topk experiment"),
        (
            lambda d: d.assign(condition=d.condition.where(d.experiment != "trajectory", "zz")),
            "only conditions zz",
        ),
    ],
)
def test_plot_refuses_metrics_a_figure_cannot_be_drawn_from(tmp_path, reproduced, change, expected):
    import shutil

    import pandas as pd

    out = tmp_path / "rep"
    shutil.copytree(reproduced, out)
    frame = pd.read_parquet(out / "metrics.parquet")
    change(frame).to_parquet(out / "metrics.parquet")
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("fig*.png")}
    one_line_error(invoke("plot", out), expected, "nothing was redrawn")
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("fig*.png")} == before


# ---- 5i: export of a wrong-typed candidate cell -----------------------------------------------


def test_export_refuses_a_wrong_typed_cell_naming_row_and_column(tmp_path):
    pytest.importorskip("datasketch")
    from archrefine.real.candidates import CandidateStore, CandidateStoreError

    db = tmp_path / "candidates.sqlite"
    with CandidateStore(db) as store:
        for i in range(4):
            store.add(cycle=1, trial=0, code=f"x = {i}")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE candidates SET cycle = 'abc' WHERE id = 3")
    with CandidateStore(db) as store:
        for export in (lambda: store.export(tmp_path / "out"), store.to_frame):
            with pytest.raises(CandidateStoreError, match="row id 3: cycle is 'abc', not an int"):
                export()
    assert not (tmp_path / "out" / "candidates.parquet").exists()


# ---- 5j, 8: tiny-model's seed and output --------------------------------------------------------


@pytest.fixture
def tiny_extras():
    for module in ("torch", "transformers", "tokenizers", "datasketch", "sklearn"):
        pytest.importorskip(module)


def test_tiny_model_refuses_a_negative_seed(tmp_path, tiny_extras):
    one_line_error(invoke("tiny-model", tmp_path / "tm", "--seed", "-1"), "--seed")
    assert not (tmp_path / "tm").exists()


def test_tiny_model_refuses_a_file_before_training_and_leaves_nothing(
    tmp_path, tiny_extras, monkeypatch
):
    from archrefine.real import tiny

    monkeypatch.setattr(tiny, "_train", lambda *a: pytest.fail("trained before the check"))
    target = tmp_path / "tmfile"
    target.write_text("hi\n")
    one_line_error(invoke("tiny-model", target, "--steps", "1"), "not a directory")
    assert target.read_text() == "hi\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmfile"]


def test_tiny_model_refuses_a_directory_of_other_files_unless_forced(tmp_path, tiny_extras):
    target = tmp_path / "run"
    target.mkdir()
    (target / "metrics.parquet").write_bytes(b"results")
    one_line_error(invoke("tiny-model", target, "--steps", "0"), "not empty", "--force")
    assert sorted(p.name for p in target.iterdir()) == ["metrics.parquet"]
    result = invoke("tiny-model", target, "--steps", "0", "--force")
    assert result.exit_code == 0, result.output
    mode = stat.S_IMODE((target / "model.safetensors").stat().st_mode)
    assert mode == 0o666 & ~_umask()
    again = invoke("tiny-model", target / "..", "--steps", "0")  # tmp_path: holds other things
    assert again.exit_code == 2
    rebuilt = tmp_path / "tm"
    for _ in range(2):  # a tiny model's own directory is rebuilt without --force
        assert invoke("tiny-model", rebuilt, "--steps", "0").exit_code == 0
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_tiny_model_cleans_its_partial_directory_on_failure(tmp_path, tiny_extras, monkeypatch):
    from transformers import GPT2LMHeadModel

    from archrefine.real.tiny import build_tiny_model

    def fail(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(GPT2LMHeadModel, "save_pretrained", fail)
    with pytest.raises(OSError, match="No space"):
        build_tiny_model(tmp_path / "tm", steps=0, vocab_size=300)
    assert list(tmp_path.iterdir()) == []


# ---- 6: a trajectory that is not a regular file ------------------------------------------------


@pytest.mark.parametrize("command", ["calibrate", "forecast"])
def test_a_fifo_trajectory_is_refused_without_blocking(tmp_path, command):
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    one_line_error(invoke(command, fifo, "--out", out), "fifo.csv", "not a regular file")
    assert not out.exists()


def test_a_device_trajectory_is_refused_and_a_huge_one_capped(tmp_path, monkeypatch):
    from archrefine.experiments import trajectory
    from archrefine.experiments.trajectory import CalibrationError, read_trajectory

    with pytest.raises(CalibrationError, match="not a regular file"):
        read_trajectory("/dev/zero")
    big = tmp_path / "big.csv"
    big.write_text(GOOD_CSV + "#" * 200 + "\n")
    monkeypatch.setattr(trajectory, "MAX_CSV_BYTES", 100)
    with pytest.raises(CalibrationError, match="big.csv: cannot read it .*larger than"):
        read_trajectory(big)


# ---- 9: messages of runs and track ---------------------------------------------------------


def test_runs_cuts_a_long_reason_at_a_word_boundary(tmp_path):
    from archrefine.core import catalog

    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    info = {"kind": "run", "status": "complete", "pid": "x" * 300}
    (run / "run.json").write_text(json.dumps(info))
    status = catalog.scan(tmp_path / "runs")[0]["status"]
    assert status.endswith("(the file was not changed)") or status.endswith("…"), status
    long = ValueError("word " * 100)
    cut = catalog._first_line(long)
    assert cut.endswith("word…") and len(cut) <= catalog.MAX_REASON


@pytest.fixture
def finished_run(tmp_path) -> Path:
    out = tmp_path / "run"
    result = invoke("run", "--trials", "2", "--set", "loop.cycles=3", "--no-figures", "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_track_refuses_an_empty_experiment_and_an_unfinished_run(tmp_path, finished_run):
    pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    one_line_error(
        invoke("track", finished_run, "--uri", uri, "--experiment", ""), "--experiment", "empty"
    )
    info = json.loads((finished_run / "run.json").read_text())
    info["status"] = "running"
    (finished_run / "run.json").write_text(json.dumps(info))
    one_line_error(invoke("track", finished_run, "--uri", uri), "did not finish", "--incomplete")
    assert not (tmp_path / "mlflow.db").exists()


def test_track_of_a_corrupt_metrics_file_does_not_call_its_files_complete(
    tmp_path, finished_run, monkeypatch
):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    (finished_run / "metrics.parquet").write_bytes(b"garbage")
    result = invoke("track", finished_run, "--uri", (tmp_path / "mlruns").as_uri())  # its
    # artifacts there too: with a sqlite store MLflow puts them in ./mlruns, the repository
    assert result.exit_code == 1
    assert "metrics.parquet cannot be read" in result.output
    assert "complete" not in result.output
