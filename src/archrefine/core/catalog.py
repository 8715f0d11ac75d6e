"""The run catalog: what the directories under a root hold, read from their own files only.

Every directory with a `run.json` is one entry (a sweep's points are part of their sweep, not
entries of their own). Nothing here raises on a damaged directory: it is listed as
`unreadable: <reason>`. A run still marked running whose process is gone is `interrupted`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from archrefine.core import liveness
from archrefine.core.metrics import METRICS
from archrefine.core.store import StoreError, not_a_directory, read_metrics, read_run

FIELDS = ("name", "kind", "date", "status", "config_hash", *METRICS, "path")


def scan(root: Path) -> list[dict[str, Any]]:
    """One record per run directory under `root` (itself included), oldest first."""
    root = Path(root)
    if not root.is_dir():
        raise StoreError(f"{root}: {not_a_directory(root)}")
    found = []
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if "run.json" in files:
            dirs[:] = []  # a run's subdirectories (a sweep's points) belong to it
            found.append(describe(Path(here), root))
    return sorted(found, key=lambda r: (r["date"] or "", r["name"]))


def describe(path: Path, root: Path | None = None) -> dict[str, Any]:
    """The catalog record of one run directory."""
    name = path.relative_to(root).as_posix() if root is not None else path.name
    record: dict[str, Any] = dict.fromkeys(FIELDS)
    record.update(name=name if name != "." else path.resolve().name, path=str(path))
    try:
        info = read_run(path)
    except StoreError as err:
        record["status"] = f"unreadable: {_first_line(err, str(path / 'run.json'))}"
        return record
    record.update(kind=info.get("kind"), date=info.get("started"), status=_status(path, info))
    config = path / "config.toml"
    if config.is_file():
        try:
            record["config_hash"] = hashlib.sha256(config.read_bytes()).hexdigest()[:10]
        except OSError as err:
            record["status"] = f"unreadable: config.toml {_first_line(err)}"
    metrics = path / "metrics.parquet"
    if metrics.exists() and info.get("kind") != "sweep":
        try:
            record.update(final_means(metrics))
        except (pa.ArrowException, OSError, ValueError, KeyError, TypeError) as err:  # text cells
            record["status"] = f"unreadable: metrics.parquet {_first_line(err)}"
    elif metrics.exists():
        try:
            pq.read_schema(metrics)
        except (pa.ArrowException, OSError) as err:
            record["status"] = f"unreadable: metrics.parquet {_first_line(err)}"
    return record


def _first_line(err: BaseException, path: str | None = None) -> str:
    """The error's first line (`path` shortened to its name), cut at a word boundary with an
    ellipsis when over `MAX_REASON` characters: never mid-word."""
    text = (str(err).splitlines() or [type(err).__name__])[0]
    if path is not None:
        text = text.replace(path, Path(path).name)
    if len(text) <= MAX_REASON:
        return text
    cut = text[: MAX_REASON - 1]
    return (cut[: cut.rfind(" ")] if " " in cut else cut).rstrip(" ,;:(") + "…"


MAX_REASON = 160  # the longest reason `runs` shows for an unreadable record


def _status(path: Path, info: dict[str, Any]) -> str:
    """finished / incomplete (files missing) / running / interrupted (its process on this host
    is gone) / `running (on HOST)` (another host: cannot tell) / unknown (no pid recorded)."""
    status = info.get("status")
    if status == "complete":
        listed = info.get("files") or []
        return "finished" if all((path / f).exists() for f in listed) else "incomplete"
    if status == "running":
        alive = liveness.state(info)
        if alive == "gone":
            return "interrupted"
        if alive == "elsewhere":
            return f"running (on {info['host']})"
        return "unknown (no pid recorded)" if alive == "unknown" else "running"
    return "incomplete"


def _main_trajectory(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows that are "the run": a reproduce directory's trajectory baseline, else all."""
    if "experiment" in frame.columns:
        sel = frame[(frame.experiment == "trajectory") & (frame.condition == "baseline")]
        return sel if not sel.empty else frame[frame.experiment == frame.experiment.iloc[0]]
    return frame


def final_means(metrics: Path) -> dict[str, float]:
    """Means over trials of the last cycle's metrics (NaN where a metric is missing)."""
    schema = pq.read_schema(metrics)
    wanted = ["cycle", "experiment", "condition", *METRICS]
    frame = pq.read_table(metrics, columns=[c for c in wanted if c in schema.names]).to_pandas()
    sel = _main_trajectory(frame)
    last = sel[sel.cycle == sel.cycle.max()]
    return {k: float(last[k].mean()) if k in last.columns else float("nan") for k in METRICS}


def trajectories(path: Path, *, prefix: bool = True) -> dict[str, pd.DataFrame]:
    """What `compare` overlays for one run (a directory or its metrics.parquet): the run's
    frame, a reproduce directory's trajectory baseline, or each point of a sweep (labelled
    `run/point`, or the point alone without `prefix`)."""
    path = Path(path)
    frame = read_metrics(path)
    label = path.parent.name if path.suffix == ".parquet" else path.resolve().name
    if "point" in frame.columns:
        groups = frame.groupby("point", sort=False)
        return {f"{label}/{name}" if prefix else str(name): sel for name, sel in groups}
    return {label: _main_trajectory(frame)}
