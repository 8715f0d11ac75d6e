"""The SQLite candidate log: real files, real transactions, a real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from archrefine.real.candidates import COLUMNS, CandidateStore, CandidateStoreError

SRC = str(Path(__file__).resolve().parents[1] / "src")


def full(**over):
    row = dict(run_id="r1", cycle=2, trial=1, prompt="Write a CNN.", response="```python\n...```",
               code="class Net: ...", status="ok", reason="ok", params=30730, accuracy=0.61,
               seconds=2.5, novelty=0.4, near_duplicate=False, fingerprint="ab12",
               parent_ids=[3, 7], selected=False)  # fmt: skip
    return row | over


@pytest.fixture
def store(tmp_path: Path):
    with CandidateStore(tmp_path / "c.sqlite") as s:
        yield s


def test_a_row_round_trips_with_every_field(store: CandidateStore) -> None:
    cid = store.add(**full())
    (row,) = store.cycle_rows(2)
    assert row == full() | {"id": cid, "created": row["created"]}
    created = datetime.fromisoformat(row["created"])
    assert created.utcoffset() == timedelta(0)  # UTC, with the offset written out
    assert list(row) == list(COLUMNS)


def test_defaults_ids_and_cycles(store: CandidateStore) -> None:
    a = store.add(cycle=1)
    b = store.add(cycle=1, run_id="r2", status="rejected", reason="line 1: import of 'os'")
    c = store.add(cycle=np.int64(2), accuracy=np.float32(0.5), near_duplicate=np.bool_(True))
    assert (a, b, c) == (1, 2, 3) and len(store) == 3
    first = store.cycle_rows(1)[0]
    assert first["status"] == "pending" and first["parent_ids"] == [] and first["trial"] == 0
    assert first["prompt"] is None and first["selected"] is False and first["run_id"] == ""
    assert [r["id"] for r in store.cycle_rows(1)] == [1, 2]
    assert [r["id"] for r in store.cycle_rows(1, run_id="r2")] == [2]
    assert store.cycle_rows(2)[0]["near_duplicate"] is True
    assert store.cycle_rows(3) == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "candidate field 'cycle' is required"),
        ({"cycle": 1, "colour": "red"}, "candidate field 'colour' is not one of run_id, cycle"),
        ({"cycle": 1, "id": 5}, "candidate field 'id' is not one of"),
        ({"cycle": 1.5}, "candidate field 'cycle': 1.5 is not an integer"),
        ({"cycle": True}, "candidate field 'cycle': True is not an integer"),
        ({"cycle": 1, "status": "great"}, "candidate field 'status': 'great' is not one of"),
        ({"cycle": 1, "status": None}, "candidate field 'status' must not be None"),
        ({"cycle": 1, "accuracy": "high"}, "candidate field 'accuracy': 'high' is not float"),
        ({"cycle": 1, "parent_ids": ["a"]}, "candidate field 'parent_ids': 'a' is not an integer"),
        ({"cycle": 1, "selected": 2}, "candidate field 'selected': 2 is not a bool"),
        ({"cycle": 1, "prompt": b"bytes"}, "candidate field 'prompt': b'bytes' is not str"),
    ],
)
def test_bad_fields_fail_with_one_line_and_write_nothing(
    store: CandidateStore, fields: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as err:
        store.add(**fields)
    assert "\n" not in str(err.value) and len(store) == 0


def test_add_many_is_all_or_nothing(store: CandidateStore) -> None:
    store.add(cycle=0)
    with pytest.raises(UnicodeEncodeError):  # fails inside SQLite, after the first insert
        store.add_many([full(), full(response="\ud800 lone surrogate")])
    assert len(store) == 1
    assert store.add_many([full(cycle=5), full(cycle=5)]) == [2, 3]  # the rollback left no trace


def test_update_fills_in_the_outcome(store: CandidateStore) -> None:
    cid = store.add(cycle=1, prompt="p", response="r")
    store.update(cid, status="timeout", reason="timeout: exceeded 5 s", seconds=5.01)
    row = store.cycle_rows(1)[0]
    assert (row["status"], row["seconds"], row["prompt"]) == ("timeout", 5.01, "p")
    with pytest.raises(CandidateStoreError, match="no candidate with id 99"):
        store.update(99, status="ok")


def test_mark_selected_is_all_or_nothing(store: CandidateStore) -> None:
    ids = store.add_many([full(), full(), full()])
    store.mark_selected([ids[0], ids[2]])
    assert [r["selected"] for r in store.cycle_rows(2)] == [True, False, True]
    with pytest.raises(CandidateStoreError, match=r"no candidates with ids \[42\]"):
        store.mark_selected([ids[1], 42])
    assert [r["selected"] for r in store.cycle_rows(2)] == [True, False, True]
    store.mark_selected([ids[0]], selected=False)
    assert [r["selected"] for r in store.cycle_rows(2)] == [False, False, True]


def test_to_frame_has_every_column_and_sensible_types(store: CandidateStore) -> None:
    empty = store.to_frame()
    assert list(empty.columns) == list(COLUMNS) and len(empty) == 0
    store.add(**full())
    store.add(cycle=3)
    frame = store.to_frame()
    assert list(frame.columns) == list(COLUMNS)
    assert frame["params"].dtype == np.float64  # numeric; exact text in SQLite (any size)
    assert frame["params"].isna().tolist() == [False, True]
    assert frame["selected"].dtype == bool and frame["accuracy"].dtype == np.float64
    assert frame["parent_ids"].tolist() == [[3, 7], []]


def test_export_parquet_is_typed_and_leaves_no_temp_files(
    store: CandidateStore, tmp_path: Path
) -> None:
    store.add(**full())
    store.add(cycle=3)
    out = tmp_path / "export"
    path = store.export(out)
    assert path == out / "candidates.parquet" and sorted(os.listdir(out)) == ["candidates.parquet"]
    table = pq.read_table(path)
    assert table.column_names == list(COLUMNS)
    assert table.schema.field("parent_ids").type == pa.list_(pa.int64())
    assert table.schema.field("near_duplicate").type == pa.bool_()
    assert table.column("parent_ids").to_pylist() == [[3, 7], []]
    assert table.column("params").to_pylist() == [30730, None]


def test_export_streams_in_batches_and_a_failure_keeps_the_earlier_file(
    store: CandidateStore, tmp_path: Path, monkeypatch
) -> None:
    """Rows are read and written a batch (a row group) at a time, so memory does not grow with
    the store (500 replies of 1 MB peaked at 1.4 GB written whole); the file is the same."""
    from archrefine.real import candidates

    ids = store.add_many([full(cycle=c, response="r" * (c * 100)) for c in range(1, 8)])
    store.mark_selected(ids[::2])
    whole = pq.read_table(store.export(tmp_path / "whole"))
    monkeypatch.setattr(candidates, "BATCH_ROWS", 3)
    meta = pq.read_metadata(path := store.export(tmp_path / "rows"))
    assert meta.num_row_groups == 3 and pq.read_table(path).equals(whole)
    monkeypatch.setattr(candidates, "BATCH_CHARS", 1)  # every row a batch of its own
    meta = pq.read_metadata(path := store.export(tmp_path / "chars"))
    assert meta.num_row_groups == 7 and pq.read_table(path).equals(whole)
    lines = store.export(tmp_path / "chars", fmt="jsonl").read_text().splitlines()
    assert [json.loads(line)["completion"] for line in lines] == [
        "r" * c * 100 for c in (1, 3, 5, 7)
    ]

    def broken(rows):  # the disk fills, or anything else, after the first batch
        if rows[0]["cycle"] > 1:
            raise OSError("No space left on device")
        return rows

    monkeypatch.setattr(candidates, "_numeric", broken)
    with pytest.raises(OSError, match="No space"):
        store.export(tmp_path / "chars")
    assert sorted(os.listdir(tmp_path / "chars")) == ["candidates.parquet", "selected.jsonl"]
    assert pq.read_table(tmp_path / "chars" / "candidates.parquet").equals(whole)


def test_export_jsonl_has_the_selected_prompt_completion_pairs(
    store: CandidateStore, tmp_path: Path
) -> None:
    ids = store.add_many([
        full(prompt="P1", response="R1 ünïcode"),
        full(prompt="P2", response="R2"),
        full(prompt=None, response="R3"),  # nothing to train on
        full(prompt="P4", response="line\nbreaks\n"),
    ])  # fmt: skip
    store.mark_selected([ids[0], ids[2], ids[3]])
    path = store.export(tmp_path, fmt="jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert path.name == "selected.jsonl"
    assert [json.loads(line) for line in lines] == [
        {"prompt": "P1", "completion": "R1 ünïcode"},
        {"prompt": "P4", "completion": "line\nbreaks\n"},
    ]
    with pytest.raises(ValueError, match="fmt: 'csv' is not one of parquet, jsonl"):
        store.export(tmp_path, fmt="csv")  # type: ignore[arg-type]


def test_rows_persist_and_are_shared_between_connections(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "c.sqlite"  # parent directories are created
    writer, reader = CandidateStore(path), CandidateStore(path)
    writer.add(**full())
    assert len(reader) == 1  # visible to another connection as soon as add returns
    writer.close()
    reader.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with CandidateStore(path) as again:
        assert again.cycle_rows(2)[0]["fingerprint"] == "ab12"


def test_corrupt_foreign_and_odd_files_fail_with_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database, just some text " * 100)
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as raw:
        raw.execute("CREATE TABLE users (name TEXT)")
    broken = tmp_path / "broken.sqlite"
    CandidateStore(broken).close()
    data = bytearray(broken.read_bytes())
    data[100:4096] = os.urandom(3996)  # a real header, then garbage
    broken.write_bytes(bytes(data))
    cases = [
        (junk, "not a readable SQLite candidate store"),
        (foreign, "an SQLite file of another application"),
        (broken, "not a readable SQLite candidate store"),
        (tmp_path, "is a directory"),
    ]
    for path, message in cases:
        with pytest.raises(CandidateStoreError, match=message) as err:
            CandidateStore(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert junk.read_bytes().startswith(b"this is not a database")  # left as it was


CHILD = textwrap.dedent(
    """
    import sys
    from archrefine.real.candidates import CandidateStore

    store = CandidateStore(sys.argv[1])
    i = 0
    while True:
        cid = store.add(cycle=i, status="ok", response=f"{i:06d}" * 40000, parent_ids=[i])
        print(cid, flush=True)
        i += 1
    """
)


def test_rows_committed_before_a_sigkill_are_all_there(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    env = os.environ | {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        reported = [int(child.stdout.readline()) for _ in range(25)]
    finally:
        os.kill(child.pid, signal.SIGKILL)  # mid-write: it never stops adding
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    with CandidateStore(path) as store:
        rows = store.to_frame()
        ids = rows["id"].tolist()
        assert ids[: len(reported)] == reported == list(range(1, 26))
        assert ids == list(range(1, len(ids) + 1))  # maybe more than reported; never a gap
        for row in rows.itertuples():  # every row there is whole
            assert row.response == f"{row.cycle:06d}" * 40000 and row.parent_ids == [row.cycle]
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.parametrize("count", [2**63, 2**64 + 1, 10**400])
def test_parameter_counts_of_any_size_are_stored_exactly(store: CandidateStore, count) -> None:
    cid = store.add(**full(params=count))
    store.update(cid, params=count + 1)
    assert store.cycle_rows(2)[0]["params"] == count + 1  # exact, not clamped or rounded
    value = store.to_frame()["params"].iloc[0]
    assert value == (float(count + 1) if count < 10**300 else float("inf"))
    store.export(store.path.parent)  # a numeric column, whatever the size
    assert pq.read_table(store.path.parent / "candidates.parquet").column("params").type == "double"


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(cycle=2**63), "does not fit in 64 bits"),
        (dict(cycle=1, params=-1), "negative"),
        (dict(cycle=1, accuracy=10**400), "too large"),
        (dict(cycle=1, parent_ids=[2**70]), "does not fit in 64 bits"),
    ],
)
def test_out_of_range_fields_are_one_line_value_errors(store, fields, message) -> None:
    with pytest.raises(ValueError, match=message) as err:
        store.add(**fields)
    assert len(str(err.value)) < 200 and len(store) == 0


def test_a_schema_1_file_is_migrated_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    decl = {**{k: v[0] for k, v in COLUMNS.items()}, "params": "INTEGER"}
    with sqlite3.connect(path) as raw:
        raw.execute(f"CREATE TABLE candidates ({', '.join(f'{k} {v}' for k, v in decl.items())})")
        raw.execute(
            "INSERT INTO candidates (run_id, cycle, trial, status, params, near_duplicate,"
            " parent_ids, selected, created) VALUES ('', 1, 0, 'ok', 123, 0, '[]', 0, 'now')"
        )
        raw.execute("PRAGMA application_id=0x41524346")
        raw.execute("PRAGMA user_version=1")
    with CandidateStore(path) as store:
        assert store.cycle_rows(1)[0]["params"] == 123
        store.add(cycle=1, params=2**80)
        assert [r["params"] for r in store.cycle_rows(1)] == [123, 2**80]
        assert store.check() is None


def test_disk_full_is_one_line_and_keeps_committed_rows(tmp_path: Path, monkeypatch) -> None:
    store = CandidateStore(tmp_path / "c.sqlite")
    first = store.add(**full())

    class Full:  # the connection as it behaves when the disk fills mid-transaction
        def __init__(self, db):
            self.db = db

        def execute(self, sql, *args):
            if sql.startswith(("INSERT", "UPDATE")):
                raise sqlite3.OperationalError("database or disk is full")
            return self.db.execute(sql, *args)

    real = store._db
    monkeypatch.setattr(store, "_db", Full(real))
    for write in (lambda: store.add(**full()), lambda: store.update(first, status="crashed")):
        with pytest.raises(CandidateStoreError, match="disk is full.*committed before is kept"):
            write()
    monkeypatch.setattr(store, "_db", real)
    assert [r["status"] for r in store.cycle_rows(2)] == ["ok"]
    store.close()


def test_a_real_full_disk_is_one_line(tmp_path: Path) -> None:
    """A store on a 1 MiB tmpfs (root only) filled by large responses."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
        ).returncode
    ):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        with CandidateStore(mnt / "c.sqlite") as store:
            kept = store.add(**full())
            with pytest.raises(CandidateStoreError, match="full") as err:
                for _ in range(100):
                    store.add(**full(response="x" * 100_000))
            assert "\n" not in str(err.value)
            assert store.cycle_rows(2)[0]["id"] == kept
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_check_finds_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with CandidateStore(path) as store:
        store.add_many([full(response="r" * 5000) for _ in range(50)])
        assert store.check() is None
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = b"\0" * (len(data) - len(data) // 2)  # half the pages zeroed
    path.write_bytes(bytes(data))
    with CandidateStore(path) as store:
        problem = store.check()
        assert problem and "\n" not in problem
        assert ".recover" in str(store.damaged(problem))
