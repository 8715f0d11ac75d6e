import json
import os
import stat

import pandas as pd
import pytest

from archrefine.core.store import (
    StoreError,
    atomic_write_text,
    close_run,
    create_file,
    expect_kind,
    file_mode,
    open_run,
    read_metrics,
    read_run,
    resume_run,
    umask,
    write_parquet,
)


def frame():
    return pd.DataFrame(
        {
            "trial": [0],
            "cycle": [1],
            "validity": [0.1],
            "novelty": [0.9],
            "diversity": [0.9],
            "fitness": [0.5],
        }
    )


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_run_directory_is_not_overwritten_without_force(tmp_path):
    out = tmp_path / "run"
    open_run(out, force=False, kind="run")
    with pytest.raises(StoreError, match=r"already holds a run \(run, this process's own\)"):
        open_run(out, force=False, kind="run")
    open_run(out, force=True, kind="run")
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    close_run(out, files=["x"], started=0.0)
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_metrics_round_trip(tmp_path):
    write_parquet(tmp_path / "metrics.parquet", frame())
    pd.testing.assert_frame_equal(read_metrics(tmp_path), frame())


def test_numpy_columns_are_written_as_the_frame_would_be(tmp_path):
    """`run` writes its numpy columns without pandas: NaN becomes null, as from a DataFrame,
    and every kind of column reads back the same."""
    import numpy as np
    import pyarrow.parquet as pq

    columns = {
        "trial": np.array([0, 0, 1], dtype=np.int64),
        "fitness": np.array([0.5, np.nan, -1.25]),
        "small": np.array([1.5, 2.5, np.nan], dtype=np.float32),
        "count": np.array([3, 2, 1], dtype=np.uint8),
        "flag": np.array([True, False, True]),  # not one fixed-width buffer: pyarrow's way
        "ragged": np.arange(6.0)[::2],  # not contiguous
    }
    write_parquet(tmp_path / "a.parquet", columns)
    write_parquet(tmp_path / "b.parquet", pd.DataFrame(columns))
    a, b = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    assert a.column("fitness").null_count == 1 == b.column("fitness").null_count
    assert a.select(list(columns)).equals(b.select(list(columns)))
    pd.testing.assert_frame_equal(a.to_pandas(), b.to_pandas(), check_exact=True)


def test_corrupt_and_foreign_files_fail_with_one_line(tmp_path):
    bad = tmp_path / "metrics.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(StoreError, match="not a readable Parquet file") as err:
        read_metrics(bad)
    assert "\n" not in str(err.value)
    write_parquet(bad, pd.DataFrame({"a": [1]}))
    with pytest.raises(StoreError, match="not an archrefine metrics file .missing columns: trial"):
        read_metrics(bad)
    with pytest.raises(StoreError, match="no such file"):
        read_metrics(tmp_path / "nope.parquet")


def test_a_finished_or_foreign_directory_says_what_it_holds(tmp_path):
    out = tmp_path / "run"
    open_run(out, force=False, kind="sweep")
    close_run(out, files=[], started=0.0)
    with pytest.raises(StoreError, match=r"already holds a run \(sweep, finished\); choose"):
        open_run(out, force=False, kind="run")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty \\(and holds no run\\)"):
        open_run(other, force=False, kind="run")


def test_resume_run_records_this_process_and_keeps_the_rest(tmp_path):
    out = tmp_path / "run"
    open_run(out, force=False, kind="loop", meta={"seed": 7})
    info = read_run(out)
    info.update(pid=1, pid_start=0)  # as if written by a process long gone
    (out / "run.json").write_text(json.dumps(info))
    resume_run(out, read_run(out))
    again = read_run(out)
    assert again["seed"] == 7 and again["pid"] == os.getpid() and len(again["resumed"]) == 1
    assert expect_kind(out, "loop")["kind"] == "loop"
    with pytest.raises(StoreError, match="holds a real loop .*`archrefine loop --resume"):
        expect_kind(out, "run")


def test_files_get_the_umask_mode(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "x")
    create_file(tmp_path / "b.db")
    for name in ("a.txt", "b.db"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == file_mode() == 0o666 & ~umask()
