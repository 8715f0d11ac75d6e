"""Every candidate of a real run, logged as it is produced, in an SQLite file that survives crashes.

A real cycle costs LLM calls and sandbox minutes, so nothing it produced may be lost when the run
dies (OOM killer, Ctrl-C, a lost machine): each `add` is its own transaction, committed before it
returns, and a half-written row is never visible. The file is in WAL mode with
`synchronous=NORMAL`: a crashed *process* loses nothing committed; a power cut may lose the last
commits but never corrupts the file. Readers (a notebook, `archrefine` plots) can open the file
while the run writes to it.

Over 400 lines because the store's schema (`COLUMNS`), its migration and its queries must
change together, and the row checks (`_record`, `_decode`) follow the schema column by column.

Example
-------
>>> store = CandidateStore(run_dir / "candidates.sqlite")  # doctest: +SKIP
>>> cid = store.add(run_id="r1", cycle=1, prompt=p, response=r, code=c, status="ok",
...                 accuracy=0.61, parent_ids=[3, 7])  # doctest: +SKIP
>>> store.mark_selected([cid])  # doctest: +SKIP
>>> store.export(run_dir, fmt="jsonl")  # selected prompt-completion pairs  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import numbers
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from archrefine.core.store import atomic_file, create_file
from archrefine.sandbox.sandbox import STATUSES as SANDBOX_STATUSES

__all__ = ["COLUMNS", "STATUSES", "CandidateStore", "CandidateStoreError"]

APPLICATION_ID = 0x41524346  # "ARCF": marks the file as ours (PRAGMA application_id)
SCHEMA_VERSION = 2  # 2: `params` is exact decimal text (any size); 1 files are migrated on open
INT64 = 2**63  # SQLite integers are signed 64-bit: anything outside is refused, never overflowed
STATUSES = (*SANDBOX_STATUSES, "pending", "no_code", "rejected", "duplicate")
"""The sandbox's outcomes, plus: pending (not evaluated yet), no_code (no code in the response),
rejected (failed `static_check`), duplicate (a near duplicate, not run)."""

_TEXT, _INT, _REAL, _BOOL = pa.string(), pa.int64(), pa.float64(), pa.bool_()
COLUMNS: dict[str, tuple[str, pa.DataType]] = {
    "id": ("INTEGER PRIMARY KEY AUTOINCREMENT", _INT),
    "run_id": ("TEXT NOT NULL", _TEXT),
    "cycle": ("INTEGER NOT NULL", _INT),
    "trial": ("INTEGER NOT NULL", _INT),
    "prompt": ("TEXT", _TEXT),
    "response": ("TEXT", _TEXT),
    "code": ("TEXT", _TEXT),
    "status": ("TEXT NOT NULL", _TEXT),
    "reason": ("TEXT", _TEXT),
    "params": ("TEXT", _REAL),  # exact decimal of any size; a float column in exports
    "accuracy": ("REAL", _REAL),
    "seconds": ("REAL", _REAL),
    "novelty": ("REAL", _REAL),
    "near_duplicate": ("INTEGER NOT NULL CHECK (near_duplicate IN (0, 1))", _BOOL),
    "fingerprint": ("TEXT", _TEXT),
    "parent_ids": ("TEXT NOT NULL", pa.list_(_INT)),
    "selected": ("INTEGER NOT NULL CHECK (selected IN (0, 1))", _BOOL),
    "created": ("TEXT NOT NULL", _TEXT),
}
"""Column → (SQLite declaration, Arrow type in exports). `parent_ids` is a JSON list in SQLite;
`params` is decimal text, so a forged count of 2**64 or 10**100 is stored exactly instead of
overflowing SQLite's 64-bit integers (`cycle_rows` gives it back as a Python int, exports as
float64, exact up to 2**53)."""
DEFAULTS: dict[str, Any] = dict(run_id="", trial=0, status="pending", near_duplicate=False,
                                parent_ids=(), selected=False)  # fmt: skip
BATCH_ROWS, BATCH_CHARS = 10_000, 32_000_000
"""`export` streams rows a batch (one Parquet row group) at a time: so many rows, or about so
many characters of prompts, replies and code, whichever comes first."""
_KINDS = {"TEXT": str, "INTEGER": int, "REAL": float}
_NAMES = {str: "text", int: "an integer", float: "a number"}
_PANDAS = {_INT: "Int64", _REAL: "float64", _BOOL: "bool"}
RECOVER = "sqlite3 {path} .recover | sqlite3 recovered.sqlite"


class CandidateStoreError(RuntimeError):
    """The file is not a usable candidate store, or a request does not fit it; one line."""


class CandidateStore:
    """An append-mostly log of candidates in the SQLite file at `path` (created if missing).

    One object per process (and thread); several processes may open the same file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise CandidateStoreError(f"{self.path}: is a directory, not a candidate store")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            create_file(self.path)  # with the umask's mode: SQLite alone would make it 0644
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        except (sqlite3.Error, OSError) as err:
            raise CandidateStoreError(f"{self.path}: cannot open ({_line(err)})") from None
        try:
            self._open()
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise CandidateStoreError(
                f"{self.path}: not a readable SQLite candidate store ({_line(err)})"
            ) from None
        except CandidateStoreError:
            self._db.close()
            raise

    def _open(self) -> None:
        db = self._db
        app = db.execute("PRAGMA application_id").fetchone()[0]
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        if app == 0 and not tables:  # a new (or empty) file: make it ours
            db.execute("PRAGMA journal_mode=WAL")
            columns = ", ".join(f"{name} {decl}" for name, (decl, _) in COLUMNS.items())
            db.execute("BEGIN IMMEDIATE")
            db.execute(f"CREATE TABLE IF NOT EXISTS candidates ({columns})")
            db.execute("CREATE INDEX IF NOT EXISTS by_cycle ON candidates (run_id, cycle)")
            db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        elif app != APPLICATION_ID:
            raise CandidateStoreError(f"{self.path}: an SQLite file of another application")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 1:
            self._migrate_v1()
            version = SCHEMA_VERSION
        if version != SCHEMA_VERSION:
            raise CandidateStoreError(
                f"{self.path}: schema version {version}, this archrefine reads {SCHEMA_VERSION}"
            )
        found = [r[1] for r in db.execute("PRAGMA table_info(candidates)")]
        if found != list(COLUMNS):
            raise CandidateStoreError(f"{self.path}: candidates table has columns {found}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")

    def _migrate_v1(self) -> None:
        """Schema 1 kept `params` as INTEGER: copy the table with `params` as text, in one
        transaction (a crash leaves the file at schema 1)."""
        db, names = self._db, ", ".join(COLUMNS)
        columns = ", ".join(f"{name} {decl}" for name, (decl, _) in COLUMNS.items())
        copy = names.replace("params", "CAST(params AS TEXT)")
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(f"CREATE TABLE candidates_v2 ({columns})")
            db.execute(f"INSERT INTO candidates_v2 ({names}) SELECT {copy} FROM candidates")
            db.execute("DROP TABLE candidates")
            db.execute("ALTER TABLE candidates_v2 RENAME TO candidates")
            db.execute("CREATE INDEX IF NOT EXISTS by_cycle ON candidates (run_id, cycle)")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def check(self) -> str | None:
        """The first problem SQLite's `quick_check` finds in the file, or None when it is sound.

        A truncated file or WAL can also pass it while rows are gone: the loop compares row
        counts with the cycles it recorded complete as well (docs/real-loop.md)."""
        try:
            found = [r[0] for r in self._db.execute("PRAGMA quick_check")]
            self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM candidates LIMIT 1").fetchall()
        except sqlite3.DatabaseError as err:
            return _line(err)
        return None if found == ["ok"] else _line("; ".join(found[:3]))

    def damaged(self, problem: str) -> CandidateStoreError:
        """The one-line error for a damaged store, saying how to recover what is intact."""
        return CandidateStoreError(
            f"{self.path} is damaged ({problem}); nothing was changed. Recover the intact rows "
            f"with `{RECOVER.format(path=self.path)}` and compare them with metrics.parquet, "
            "or start the run afresh with --force"
        )

    # ---- writing ---------------------------------------------------------------------------

    def add(self, **fields: Any) -> int:
        """Log one candidate (keywords: the COLUMNS but id and created); returns its id.

        `cycle` is required; the rest default to `DEFAULTS` or NULL.
        """
        return self.add_many([fields])[0]

    def add_many(self, rows: Iterable[Mapping[str, Any]]) -> list[int]:
        """Log several candidates in one transaction: all of them, or none."""
        records = [_record(row, insert=True) for row in rows]
        ids: list[int] = []
        with self._transaction():
            for rec in records:
                names = ", ".join(rec)
                marks = ", ".join("?" * len(rec))
                sql = f"INSERT INTO candidates ({names}) VALUES ({marks})"
                ids.append(self._db.execute(sql, list(rec.values())).lastrowid)
        return ids

    def update(self, cid: int, **fields: Any) -> None:
        """Fill in fields of candidate `cid` once known (e.g. the sandbox's outcome)."""
        rec = _record(fields, insert=False)
        if not rec:
            return
        with self._transaction():
            sets = ", ".join(f"{name} = ?" for name in rec)
            cur = self._db.execute(
                f"UPDATE candidates SET {sets} WHERE id = ?", [*rec.values(), _int("id", cid)]
            )
            if cur.rowcount != 1:
                raise CandidateStoreError(f"no candidate with id {cid}")

    def mark_selected(self, ids: Iterable[int], selected: bool = True) -> None:
        """Mark candidates as selected for refinement (all, or none if an id is unknown)."""
        wanted = sorted({_int("ids", i) for i in ids})
        with self._transaction():
            found = set()
            for chunk in range(0, len(wanted), 500):
                part = wanted[chunk : chunk + 500]
                sql = f"SELECT id FROM candidates WHERE id IN ({', '.join('?' * len(part))})"
                found.update(r[0] for r in self._db.execute(sql, part))
            if missing := [i for i in wanted if i not in found]:
                raise CandidateStoreError(f"no candidates with ids {missing[:10]}")
            self._db.executemany(
                "UPDATE candidates SET selected = ? WHERE id = ?",
                [(int(selected), i) for i in wanted],
            )

    # ---- reading ---------------------------------------------------------------------------

    def __len__(self) -> int:
        try:
            return self._db.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]
        except sqlite3.DatabaseError as err:
            raise self.damaged(_line(err)) from None

    def cycle_counts(self) -> dict[int, tuple[int, int]]:
        """{cycle: (candidates, of them still pending)}: what a resume checks against its log.

        Raises sqlite3.DatabaseError on a damaged file (the caller says how to recover)."""
        sql = "SELECT cycle, COUNT(*), SUM(status = 'pending') FROM candidates GROUP BY cycle"
        return {c: (n, p) for c, n, p in self._db.execute(sql)}

    def _rows(
        self, where: str = "", params: Iterable[Any] = (), read: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Rows as dicts; `read` replaces a column by an SQL expression (NULL: not read)."""
        return [row for batch in self._batches(where, params, read) for row in batch]

    def cycle_rows(self, cycle: int, *, run_id: str | None = None) -> list[dict[str, Any]]:
        """The candidates of one cycle (of one run, if given), in the order they were added."""
        if run_id is None:
            return self._rows("WHERE cycle = ?", [_int("cycle", cycle)])
        return self._rows("WHERE cycle = ? AND run_id = ?", [_int("cycle", cycle), run_id])

    def selected_rows(self) -> list[dict[str, Any]]:
        """The selected candidates, in the order they were added: the fine-tuning set, read
        without every other row (`to_frame` of 500 replies of 1 MB peaked at 1.6 GB)."""
        return self._rows("WHERE selected = 1")

    def to_frame(self, *, reply_chars: int | None = None) -> pd.DataFrame:
        """All candidates as a DataFrame: one column per COLUMNS entry, integers as nullable
        Int64, `params` as float64 (exact up to 2**53), flags as bool, `parent_ids` as lists.
        With `reply_chars`: no prompts, and a reply only where no code was found, cut to that
        many characters by SQLite (500 replies of 1 MB read whole peaked at ~3x the data)."""
        read = None
        if reply_chars is not None:
            cut = f"CASE WHEN code IS NULL THEN substr(response, 1, {int(reply_chars)}) END"
            read = {"prompt": "NULL", "response": cut}
        frame = pd.DataFrame(_numeric(self._rows(read=read)), columns=list(COLUMNS))
        kinds = {name: _PANDAS.get(kind, object) for name, (_, kind) in COLUMNS.items()}
        return frame.astype(kinds)

    def export(self, out_dir: str | Path, fmt: Literal["parquet", "jsonl"] = "parquet") -> Path:
        """Write `candidates.parquet` (every candidate) or `selected.jsonl` (one
        `{"prompt": ..., "completion": ...}` per selected candidate with both, completion = the
        model's response, ready for fine-tuning) into `out_dir`, atomically; return the path."""
        if fmt not in ("parquet", "jsonl"):
            raise ValueError(f"fmt: {fmt!r} is not one of parquet, jsonl")
        path = Path(out_dir) / {"parquet": "candidates.parquet", "jsonl": "selected.jsonl"}[fmt]
        with atomic_file(path) as fh:  # streamed: 500 replies of 1 MB peaked at 1.4 GB whole
            if fmt == "parquet":
                schema = pa.schema([(name, kind) for name, (_, kind) in COLUMNS.items()])
                with pq.ParquetWriter(fh, schema) as writer:
                    for rows in self._batches():
                        writer.write_table(pa.Table.from_pylist(_numeric(rows), schema=schema))
            else:
                for rows in self._batches("WHERE selected = 1 AND prompt IS NOT NULL"):
                    for row in rows:
                        if row["response"] is not None:
                            pair = {"prompt": row["prompt"], "completion": row["response"]}
                            fh.write((json.dumps(pair, ensure_ascii=False) + "\n").encode())
        return path

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> CandidateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _batches(
        self, where: str = "", params: Iterable[Any] = (), read: Mapping[str, str] | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """`_rows` a batch at a time (what `export` streams): at most `BATCH_ROWS` rows or
        about `BATCH_CHARS` characters of text each (one row more than that alone)."""
        exprs = ", ".join((read or {}).get(c, c) for c in COLUMNS)
        sql = f"SELECT {exprs} FROM candidates {where} ORDER BY id"
        batch: list[dict[str, Any]] = []
        chars = 0
        try:
            for raw in self._db.execute(sql, list(params)):
                batch.append(_decode(raw))
                chars += sum(len(v) for v in raw if isinstance(v, str | bytes))
                if len(batch) >= BATCH_ROWS or chars >= BATCH_CHARS:
                    yield batch
                    batch, chars = [], 0
        except (sqlite3.DatabaseError, ValueError) as err:
            raise self.damaged(_line(err)) from None
        if batch:
            yield batch

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self.path)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (nothing half-written); an
    SQLite failure (disk full, I/O error) comes out as a one-line CandidateStoreError."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db, self.path = db, path

    def __enter__(self) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            raise _write_error(self.path, err) from None

    def __exit__(self, kind: object, error: object, tb: object) -> None:
        if kind is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error as err:
                kind, error = type(err), err
        with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
            self.db.execute("ROLLBACK")
        if isinstance(error, sqlite3.Error):  # disk full, I/O error, a damaged page: one line
            raise _write_error(self.path, error) from None


def _write_error(path: Path, err: sqlite3.Error) -> CandidateStoreError:
    return CandidateStoreError(
        f"{path}: cannot write ({_line(err)}); every row committed before is kept"
    )


def _record(fields: Mapping[str, Any], *, insert: bool) -> dict[str, Any]:
    """Validate candidate fields; return them as SQLite values, in COLUMNS order."""
    settable = [c for c in COLUMNS if c not in ("id", "created")]
    if unknown := sorted(set(fields) - set(settable)):
        raise ValueError(f"candidate field {unknown[0]!r} is not one of {', '.join(settable)}")
    if insert:
        if "cycle" not in fields:
            raise ValueError("candidate field 'cycle' is required")
        fields = {**DEFAULTS, **fields, "created": datetime.now(timezone.utc).isoformat()}
    out: dict[str, Any] = {}
    for name in COLUMNS:
        if name not in fields:
            continue
        value, decl = fields[name], COLUMNS[name][0]
        if value is None and "NOT NULL" in decl:
            raise ValueError(f"candidate field {name!r} must not be None")
        if value is None:
            out[name] = None
        elif name == "parent_ids":
            out[name] = json.dumps([_int(name, i) for i in value])
        elif name in ("near_duplicate", "selected"):
            if value not in (True, False):  # bools, numpy bools and 0/1
                raise ValueError(f"candidate field {name!r}: {value!r} is not a bool")
            out[name] = int(bool(value))
        elif name == "status" and value not in STATUSES:
            raise ValueError(f"candidate field 'status': {value!r} is not one of {STATUSES}")
        elif name == "params":
            count = _int(name, value, limit=None)
            if count < 0:
                raise ValueError(f"candidate field 'params': {count} is negative")
            out[name] = str(count)
        else:
            out[name] = _convert(name, value, _KINDS[decl.split()[0]])
    return out


def _convert(name: str, value: Any, kind: type) -> Any:
    if kind is int:
        return _int(name, value)
    if kind is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"candidate field {name!r}: {_short(value)} is too large") from None
    if kind is str and isinstance(value, str):
        return value
    raise ValueError(f"candidate field {name!r}: {_short(value)} is not {kind.__name__}")


def _int(name: str, value: Any, limit: int | None = INT64) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ValueError(f"candidate field {name!r}: {_short(value)} is not an integer")
    value = int(value)
    if limit is not None and not -limit <= value < limit:
        raise ValueError(f"candidate field {name!r}: {_short(value)} does not fit in 64 bits")
    return value


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, int) or value.bit_length() < 200 else "a number"
    return text if len(text) <= 60 else text[:57] + "..."


def _numeric(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` with `params` as a float (inf beyond float64's range): a numeric column."""
    for row in rows:
        if row["params"] is not None:
            try:
                row["params"] = float(row["params"])
            except OverflowError:
                row["params"] = float("inf")
    return rows


def _decode(row: tuple) -> dict[str, Any]:
    """One stored row as a dict; a ValueError naming the row and column when a cell is not of
    its column's type (SQLite keeps 'abc' in an INTEGER column as text), so that every reader
    (export, report, cycle_rows) refuses it in one line instead of failing in Arrow or pandas."""
    rec = dict(zip(COLUMNS, row, strict=True))
    for name, (decl, _) in COLUMNS.items():
        value, want = rec[name], _KINDS[decl.split()[0]]
        if value is None and "NOT NULL" not in decl:
            continue
        real = want is float and isinstance(value, int)  # a REAL column keeps integers exactly
        if type(value) is not want and not real:
            raise ValueError(f"row id {rec['id']!r}: {name} is {_short(value)}, not {_NAMES[want]}")
    rec["parent_ids"] = json.loads(rec["parent_ids"])
    if not isinstance(rec["parent_ids"], list) or not all(
        type(i) is int for i in rec["parent_ids"]
    ):
        raise ValueError(f"row id {rec['id']}: parent_ids is not a list of integers")
    if rec["params"] is not None:  # decimal text (an old file's migrated integers too)
        rec["params"] = int(rec["params"])
    rec["near_duplicate"], rec["selected"] = bool(rec["near_duplicate"]), bool(rec["selected"])
    return rec


def _line(err: Exception) -> str:
    return " ".join(str(err).split())


def _short(value: Any) -> str:
    """A cell's value for a message: its repr, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
