"""Run directories and their files. Every write is atomic (temp file + rename), so a file that
exists is complete; `run.json` says whether the run as a whole finished."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REQUIRED = ("trial", "cycle", "validity", "novelty", "diversity", "fitness")


class StoreError(RuntimeError):
    """A problem with a run directory or a results file; the message is one line."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def default_dir(kind: str, root: Path = Path("runs")) -> Path:
    """`runs/<kind>-<UTC timestamp>`: a fresh name, so no run overwrites another by default."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = root / f"{kind}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{kind}-{stamp}-{n}"
    return path


def open_run(path: Path, *, force: bool, kind: str, meta: dict[str, Any] | None = None) -> Path:
    """Create (or, with `force`, reuse) a run directory and mark it as running."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise StoreError(f"{path}: already holds a run; choose another --out or pass --force")
    path.mkdir(parents=True, exist_ok=True)
    command = " ".join(["archrefine", *sys.argv[1:]]) if _from_cli() else None
    info = {"kind": kind, "status": "running", "started": utc_now(), "command": command}
    write_json(path / "run.json", {**info, **(meta or {})})
    return path


def close_run(path: Path, *, files: Iterable[str], started: float) -> None:
    info = json.loads((Path(path) / "run.json").read_text())
    info.update(
        status="complete",
        finished=utc_now(),
        seconds=round(time.time() - started, 3),
        files=sorted(files),
    )
    write_json(Path(path) / "run.json", info)


def _from_cli() -> bool:
    return Path(sys.argv[0]).name in ("archrefine", "__main__.py")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_metrics(path: Path) -> pd.DataFrame:
    """Read a metrics Parquet file, failing with one line if it is missing, corrupt or foreign."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.parquet"
    if not path.exists():
        raise StoreError(f"{path}: no such file")
    try:
        frame = pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StoreError(f"{path}: not a readable Parquet file ({first})") from None
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise StoreError(
            f"{path}: not an archrefine metrics file (missing columns: {', '.join(missing)})"
        )
    return frame
