"""Checkpoints and resume: a run stopped after any cycle, even by `kill -9`, resumes to exactly
the results of an uninterrupted run with the same seed, whether it checkpointed every cycle
(`checkpoint.every_s = 0`) or on a time interval (then it redoes the cycles since the last one)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from archrefine.core.config import Config
from archrefine.core.store import read_metrics
from archrefine.sim import checkpoint as checkpoint_module
from archrefine.sim.checkpoint import Checkpoint, CheckpointError
from archrefine.sim.loop import simulate


class Stop(Exception):
    pass


def stop_after(cycle: int):
    def on_cycle(c: int) -> None:
        if c == cycle:
            raise Stop

    return on_cycle


def stopped_and_resumed(cfg: Config, tmp_path, stop: int) -> pd.DataFrame:
    """Stopped by an exception after cycle `stop`: with every_s = 0 the cycle's checkpoint is
    already written, with the default interval the stop itself writes it."""
    path = tmp_path / "checkpoint.bin"
    with pytest.raises(Stop):
        simulate(cfg, on_cycle=stop_after(stop), checkpoint=path)
    assert Checkpoint(path).completed() == stop
    return simulate(cfg, checkpoint=path, resume=True).metrics


def assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_exact=True)


@pytest.mark.parametrize(
    "overrides",
    [
        {"trials": 6, "loop.cycles": 8},
        {"trials": 6, "loop.cycles": 8, "loop.archive": "all", "schedule.kind": "cyclic"},
        {"trials": 4, "loop.cycles": 5, "loop.archive": "valid", "space.known": 0},
        {"trials": 4, "loop.cycles": 6, "space.kind": "grounded"},
        {"trials": 3, "loop.cycles": 5, "space.kind": "grounded", "space.distance": "canonical"},
    ],
    ids=["abstract", "abstract-all-cyclic", "abstract-valid-unknown", "grounded", "canonical"],
)
@pytest.mark.parametrize("stop", [1, 3])
@pytest.mark.parametrize("every_s", [0, 30])
def test_paper_generator_resumes_exactly(tmp_path, overrides, stop, every_s):
    cfg = Config().with_overrides({**overrides, "checkpoint.every_s": every_s})
    assert_same(stopped_and_resumed(cfg, tmp_path, stop), simulate(cfg).metrics)


def test_checkpointing_does_not_change_results(tmp_path):
    cfg = Config().with_overrides({"trials": 5, "loop.cycles": 6, "checkpoint.every_s": 0})
    assert_same(simulate(cfg, checkpoint=tmp_path / "c.bin").metrics, simulate(cfg).metrics)


def test_a_run_killed_between_interval_checkpoints_redoes_the_cycles_since(tmp_path, monkeypatch):
    """A clock that advances 1 s per reading and every_s = 2.5: checkpoints land every few
    cycles, not every cycle. The file as a `kill -9` during the next cycle finds it (copied
    after a cycle that wrote none) is older than the cycles completed, and resuming from it
    still gives exactly the uninterrupted run's metrics."""
    ticks = iter(range(10_000))
    monkeypatch.setattr(checkpoint_module, "_now", lambda: float(next(ticks)))
    written: list[int] = []
    write = Checkpoint.write

    def spy(self, cap):
        written.append(cap.header["cycle"])
        write(self, cap)

    monkeypatch.setattr(Checkpoint, "write", spy)
    cfg = Config().with_overrides({"trials": 5, "loop.cycles": 10, "checkpoint.every_s": 2.5})
    path, killed = tmp_path / "c.bin", tmp_path / "killed.bin"
    at: list[tuple[int, int]] = []

    def on_cycle(c: int) -> None:
        if not at and written and written[-1] < c:  # the disk as a kill in cycle c + 1 leaves it
            killed.write_bytes(path.read_bytes())
            at.append((c, Checkpoint(killed).completed()))

    full = simulate(cfg, checkpoint=path, on_cycle=on_cycle).metrics
    assert 1 < len(written) < 10 and written[-1] == 10  # on the interval, and after the last
    assert at and 0 < at[0][1] < at[0][0]  # the kill loses the cycles since the last checkpoint
    assert_same(simulate(cfg, checkpoint=killed, resume=True).metrics, full)
    assert Checkpoint(killed).completed() == 10


@pytest.mark.parametrize("lora", [0, 2])
def test_learned_generator_resumes_exactly(tmp_path, lora):
    pytest.importorskip("torch")
    cfg = Config().with_overrides(
        {
            "trials": 2,
            "loop.cycles": 4,
            "loop.population": 20,
            "space.kind": "grounded",
            "generator.kind": "learned",
            "generator.learned.pretrain_steps": 20,
            "generator.learned.steps": 2,
            "generator.learned.batch": 8,
            "generator.learned.lora_rank": lora,
        }
    )
    resumed = stopped_and_resumed(cfg, tmp_path, 2)
    assert resumed["loss"].notna().any()  # fine-tuning ran, before and after the stop
    assert_same(resumed, simulate(cfg).metrics)


@pytest.mark.slow
def test_first_epoch_fitness_resumes_exactly_with_its_cache(tmp_path):
    pytest.importorskip("torch")
    cfg = Config().with_overrides(
        {
            "trials": 1,
            "loop.cycles": 3,
            "loop.population": 120,
            "loop.top_k": 5,
            "space.kind": "grounded",
            "fitness.kind": "first-epoch",
            "fitness.max_train": 64,
            "fitness.workers": 1,
        }
    )
    resumed = stopped_and_resumed(cfg, tmp_path, 2)
    assert resumed["fitness"].notna().sum() >= 2  # networks were trained before and after
    assert_same(resumed, simulate(cfg).metrics)


def test_resuming_a_finished_checkpoint_runs_no_cycle(tmp_path):
    cfg = Config().with_overrides({"trials": 3, "loop.cycles": 4})
    path = tmp_path / "c.bin"
    first = simulate(cfg, checkpoint=path).metrics
    calls = []
    again = simulate(cfg, checkpoint=path, resume=True, on_cycle=calls.append).metrics
    assert calls == []
    assert_same(again, first)


def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    path = tmp_path / "c.bin"
    simulate(Config().with_overrides({"trials": 3, "loop.cycles": 2}), checkpoint=path)
    other = Config().with_overrides({"trials": 3, "loop.cycles": 2, "seed": 1})
    with pytest.raises(CheckpointError, match="another config"):
        simulate(other, checkpoint=path, resume=True)


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04 truncated zip"])
def test_a_corrupt_checkpoint_is_one_error_naming_the_file(tmp_path, content):
    path = tmp_path / "c.bin"
    path.write_bytes(content)
    cfg = Config().with_overrides({"trials": 3, "loop.cycles": 2})
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as err:
        simulate(cfg, checkpoint=path, resume=True)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert path.read_bytes() == content  # left as it was


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_a_truncated_checkpoint_is_one_error(tmp_path, keep):
    path = tmp_path / "c.bin"
    cfg = Config().with_overrides({"trials": 3, "loop.cycles": 2})
    simulate(cfg, checkpoint=path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        simulate(cfg, checkpoint=path, resume=True)


@pytest.mark.parametrize("where", [0.3, 0.9, -1])
def test_a_checkpoint_damaged_in_place_is_refused_not_half_used(tmp_path, where):
    """Bytes overwritten without changing the size (in the arrays, or the header's numbers)
    were read as a state: the resumed run completed with validity off by up to 0.42."""
    path = tmp_path / "c.bin"
    cfg = Config().with_overrides({"trials": 3, "loop.cycles": 2})
    simulate(cfg, checkpoint=path)
    data = bytearray(path.read_bytes())
    if where == -1:  # a digit of the random generator's state, in the header
        at = data.index(b'"state": {"state": ') + len(b'"state": {"state": ')
        data[at] = ord("1") if data[at] != ord("1") else ord("2")
    else:
        data[int(len(data) * where)] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the digest"):
        simulate(cfg, checkpoint=path, resume=True)
    assert path.read_bytes() == data  # left as it was


def test_first_epoch_cache_round_trips():
    from archrefine.sandbox.training import FirstEpochFitness

    a, b = FirstEpochFitness(seed=0, workers=1), FirstEpochFitness(seed=0, workers=1)
    a.load_state([[[1, 2, 3], 0.25], [[4], 1 / 3]])
    b.load_state(json.loads(json.dumps(a.state())))
    assert b.entries() == {(1, 2, 3): 0.25, (4,): 1 / 3}


# ----------------------------------------------------------------------------- command line


def cli(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "archrefine", *args],
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


# slow enough per cycle (~0.12 s on 2 cores) to be killed mid-run, fast enough to run in seconds;
# a checkpoint after every cycle, so the test can wait for a given one
KILLABLE = {"trials": 600, "loop.cycles": 12, "checkpoint.every_s": 0}


def sets(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]


def test_resume_after_kill_9_matches_an_uninterrupted_run(tmp_path):
    out = tmp_path / "run"
    cycles = KILLABLE["loop.cycles"]
    target = int(np.random.default_rng(6).integers(2, cycles - 1))  # in [2, cycles - 2]
    child = subprocess.Popen(
        [sys.executable, "-m", "archrefine", "run", *sets(KILLABLE), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    path, done, deadline = out / "checkpoint.bin", 0, time.time() + 120
    try:
        while done < target:
            assert child.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "no checkpoint reached the target cycle"
            done = Checkpoint(path).completed() if path.exists() else 0
            time.sleep(0.01)
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    killed_at = Checkpoint(path).completed()
    assert target <= killed_at < cycles
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    assert not (out / "metrics.parquet").exists()

    p = cli("run", "--resume", str(out))
    assert p.returncode == 0, p.stderr
    assert f"after cycle {killed_at} of {cycles}" in p.stderr
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and len(info["resumed"]) == 1

    files = {"run.json", "config.toml", "metrics.parquet", "trajectory.png", "checkpoint.bin",
             "report.html"}  # fmt: skip
    assert {f.name for f in out.iterdir()} == files  # no temp file the kill left behind
    # what an uninterrupted `archrefine run` writes to metrics.parquet, without its start-up
    assert_same(read_metrics(out), simulate(Config().with_overrides(KILLABLE)).metrics)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    p = cli("run", *sets({"trials": 2, "loop.cycles": 3}), "--out", str(out))
    assert p.returncode == 0, p.stderr
    return out


def test_resume_refuses_a_config_and_finished_runs_say_so(tmp_path, finished):
    out = shutil.copytree(finished, tmp_path / "run")
    before = {f.name: f.read_bytes() for f in out.iterdir()}

    p = cli("run", "--resume", str(out), "--set", "trials=3")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "drop CONFIG and --set" in p.stderr

    p = cli("run", "--resume", str(out))
    assert p.returncode == 0, p.stderr
    assert "already complete" in p.stderr
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before

    p = cli("run", "--resume", str(tmp_path / "nothing"))
    assert p.returncode == 2 and "no run to resume" in p.stderr


def test_resume_with_a_corrupt_checkpoint_is_one_line_and_loses_nothing(tmp_path, finished):
    out = shutil.copytree(finished, tmp_path / "run")
    info = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**info, "status": "running"}))  # as if killed
    (out / "checkpoint.bin").write_bytes(b"\x00" * 100)
    before = {f.name: f.read_bytes() for f in out.iterdir()}

    p = cli("run", "--resume", str(out))
    assert p.returncode == 2
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, p.stderr
    assert "checkpoint.bin" in p.stderr and "Traceback" not in p.stderr
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


def test_resume_with_another_configs_checkpoint_is_refused_before_anything_changes(
    tmp_path, finished
):
    """A checkpoint another config wrote is refused before `--resume` records itself in
    run.json: every file of the directory stays as it was."""
    out = shutil.copytree(finished, tmp_path / "run")
    info = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**info, "status": "running"}))  # as if killed
    other = tmp_path / "other"
    p = cli("run", *sets({"trials": 2, "loop.cycles": 3, "seed": 9}), "--out", str(other))
    assert p.returncode == 0, p.stderr
    shutil.copy(other / "checkpoint.bin", out / "checkpoint.bin")
    before = {f.name: f.read_bytes() for f in out.iterdir()}

    p = cli("run", "--resume", str(out))
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "written by a run with another config" in p.stderr
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
