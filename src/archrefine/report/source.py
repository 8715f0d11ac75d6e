"""What a finished (or running) run directory holds, read from its own files only.

The report never reruns anything: it reads `run.json`, `config.toml`, `metrics.parquet`,
`claims.json`, `phases.json`, `sweep.json` and, for a loop, `candidates.sqlite`. A file that is
missing is a section left out; a file that is there but unreadable is a one-line `ReportError`
naming it, so `archrefine report` never prints a traceback. The one exception is the candidate
store: one that cannot be read (a directory, a broken link, unreadable, corrupt) is a
`ReportWarning` naming it, and the report is written without the candidates.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from archrefine.core.store import StoreError, not_a_directory, read_metrics

KINDS = ("run", "reproduce", "sweep", "loop", "sweep-point")
"""Directory kinds (run.json `kind`) a report covers."""
CANDIDATE_FIELDS = ("id", "cycle", "trial", "status", "reason", "accuracy", "novelty", "params",
                    "seconds", "near_duplicate", "selected", "parent_ids", "code")  # fmt: skip
PHASE_LISTS = ("boundaries", "low", "high", "three_phase_fit", "three_phase_low",
               "three_phase_high", "r2")  # fmt: skip
"""phases.json's fields that are lists (of cycles, or of R² values)."""
RESPONSE_CHARS = 4000
"""A reply with no code in it is kept (this much of it) so the reader sees what went wrong."""


class ReportError(StoreError):
    """A directory the report cannot read; the message is one line naming the file."""


class ReportWarning(UserWarning):
    """A part of the directory left out of the report; the message is one line naming it."""


@dataclass
class RunData:
    """Everything report.html shows, as read from one directory."""

    directory: Path
    kind: str
    info: dict[str, Any]
    config: str | None
    metrics: pd.DataFrame
    claims: list[dict[str, Any]] | None
    phases: dict[str, Any] | None
    sweep: dict[str, Any] | None
    candidates: pd.DataFrame | None


def load(directory: Path, info: dict[str, Any] | None = None) -> RunData:
    """Read a run, reproduce, sweep or loop directory; ReportError (one line) if it cannot.
    `info` stands for run.json where the caller is about to write exactly that."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ReportError(f"{directory}: {not_a_directory(directory)}")
    if info is None:
        info = _json(directory / "run.json", dict) or {}
    db = directory / "candidates.sqlite"
    has_db = db.exists() or db.is_symlink()  # a broken link is a store gone wrong, not none
    if not info and not (directory / "metrics.parquet").exists():
        raise ReportError(f"{directory}: not a run directory (no run.json, no metrics.parquet)")
    metrics = read_metrics(directory)
    kind = info.get("kind") or _infer(metrics, has_db)
    if kind not in KINDS:
        raise ReportError(
            f"{directory}: holds a {kind!r} run; report.html covers run, reproduce, sweep and "
            "loop directories"
        )
    claims = _json(directory / "claims.json", list)
    if claims is not None and not all(isinstance(c, dict) and "id" in c for c in claims):
        raise ReportError(f"{directory / 'claims.json'}: not a list of claims")
    phases = _json(directory / "phases.json", dict)
    wrong = [k for k in PHASE_LISTS if not isinstance((phases or {}).get(k, []), list)]
    if wrong:
        raise ReportError(f"{directory / 'phases.json'}: {wrong[0]!r} is not a list")
    return RunData(
        directory=directory,
        kind=kind,
        info=info,
        config=_text(directory / "config.toml"),
        metrics=metrics,
        claims=claims,
        phases=phases,
        sweep=_json(directory / "sweep.json", dict),
        candidates=_candidates_or_warning(db) if has_db else None,
    )


def _infer(metrics: pd.DataFrame, has_db: bool) -> str:
    """The kind of a directory without run.json, from what its metrics look like."""
    if "point" in metrics.columns:
        return "sweep"
    if "experiment" in metrics.columns:
        return "reproduce"
    return "loop" if has_db else "run"


def _text(path: Path) -> str | None:
    if not path.exists():
        return None
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: not readable text ({_line(err)})") from None


def _json(path: Path, kind: type) -> Any:
    """A JSON file's content if it exists and is a `kind`; None if missing."""
    text = _text(path)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ReportError(f"{path}: not valid JSON ({_line(err)})") from None
    if not isinstance(data, kind):
        raise ReportError(f"{path}: expected a JSON {_JSON_NAMES[kind]}")
    return data


_JSON_NAMES = {dict: "object", list: "list"}


def _candidates_or_warning(path: Path) -> pd.DataFrame | None:
    """The candidates, or None and a one-line ReportWarning naming the file and its problem."""
    if not path.is_file():
        what = "a directory" if path.is_dir() else "a broken link" if not path.exists() else None
        problem = f"{path}: {what or 'not a regular file'}, not a candidate store"
    else:
        try:
            return read_candidates(path)
        except Exception as err:  # noqa: BLE001  (CandidateStoreError, ReportError, sqlite's)
            problem = _line(err) if str(path) in str(err) else f"{path}: {_line(err)}"
    warnings.warn(f"{problem}; report written without the candidates", ReportWarning, 2)
    return None


def read_candidates(path: Path) -> pd.DataFrame:
    """A loop's candidates (not their prompts: each is the template plus references, and
    prompts are most of the store's size), with a reply kept only where no code was found.
    Imported here: the real loop's package needs its extra, which a simulator run may lack."""
    try:
        from archrefine.real.candidates import CandidateStore
    except ImportError as err:
        raise ReportError(f"{path}: reading it needs the real extra ({_line(err)})") from None
    with CandidateStore(path) as store:  # SQLite cuts the replies: never read whole here
        frame = store.to_frame(reply_chars=RESPONSE_CHARS)
    frame["response"] = frame.response.map(lambda r: r if isinstance(r, str) else None)
    return frame[[*CANDIDATE_FIELDS, "response"]]


def candidate_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Candidates as JSON-ready dicts: NaN and infinities as None, numpy scalars as Python."""
    records = []
    for row in frame.to_dict(orient="records"):
        rec = {}
        for key, value in row.items():
            if key == "parent_ids":
                value = [int(v) for v in value]
            elif hasattr(value, "item"):
                value = value.item()
            if value is pd.NA or (isinstance(value, float) and not math.isfinite(value)):
                value = None
            rec[key] = value
        records.append(rec)
    return records


def _line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__
