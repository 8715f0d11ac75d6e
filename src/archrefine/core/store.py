"""Run directories and their files. Every write is atomic (temp file + rename), so a file that
exists is complete; `run.json` says whether the run finished and which process (pid, host,
start time) writes it, so a dead run is told from a live one (`core/liveness.py`). Files get
the umask's modes (0o666 & ~umask): `mkstemp` alone would make every result owner-only."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from archrefine.core import liveness, metrics_table
from archrefine.core.formats import arrow_column, dumps_strict
from archrefine.core.outputs import remove_outputs

if TYPE_CHECKING:  # pandas and pyarrow load when a table is written or read, not at start-up
    import numpy as np
    import pandas as pd

REQUIRED = ("trial", "cycle", "validity", "novelty", "diversity", "fitness")


class StoreError(RuntimeError):
    """A problem with a run directory or a results file; the message is one line."""


_UMASK: list[int] = []


def umask() -> int:
    """The process umask, read once: from /proc (no side effect), else by setting it back at
    once (done at first use, before any thread of ours writes files)."""
    if not _UMASK:
        try:
            line = next(x for x in Path("/proc/self/status").read_text().splitlines()
                        if x.startswith("Umask:"))  # fmt: skip
            _UMASK.append(int(line.split()[1], 8))
        except (OSError, StopIteration, ValueError, IndexError):
            old = os.umask(0o022)
            os.umask(old)
            _UMASK.append(old)
    return _UMASK[0]


def file_mode() -> int:
    """The mode a new file of ours gets: what `open()` would give (0o666 & ~umask)."""
    return 0o666 & ~umask()


def create_file(path: Path) -> None:
    """Create `path` empty with `file_mode()` if absent (SQLite's file ignores part of umask)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode()))


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A temporary file beside `path` that replaces it if the block ends without an exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), file_mode())  # mkstemp makes 0600 whatever the umask
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, data: Any) -> None:
    """Write `data` as strict JSON (what `JSON.parse` and jq read): a value that is not a finite
    number (NaN, ±inf, numpy's too) is written as null; one missed raises rather than writing
    Python's `NaN`/`Infinity`, which no strict parser accepts."""
    atomic_write_text(path, dumps_strict(data, indent=2) + "\n")


def write_parquet(path: Path, frame: pd.DataFrame | Mapping[str, np.ndarray]) -> None:
    """Write a DataFrame, or named numpy columns (no pandas import needed), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    if isinstance(frame, Mapping):
        table = pa.Table.from_arrays([arrow_column(v) for v in frame.values()], names=list(frame))
    else:
        table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def not_a_directory(path: Path) -> str:
    """Why `path`, which should be a directory, is not one: missing, or a file."""
    if not Path(path).exists():
        return "no such directory"
    return "a file, not a directory" if Path(path).is_file() else "not a directory"


def default_dir(kind: str, root: Path = Path("runs")) -> Path:
    """`runs/<kind>-<UTC timestamp>`: a fresh name, so no run overwrites another by default."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = root / f"{kind}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{kind}-{stamp}-{n}"
    return path


RESUMABLE = ("run", "loop", "sweep", "robustness")
"""Kinds whose command continues an interrupted run: `archrefine KIND --resume DIR`."""

KINDS = {
    "run": "a simulator run (archrefine run)",
    "reproduce": "a reproduction (archrefine reproduce)",
    "loop": "a real loop (archrefine loop)",
    "sweep": "a sweep (archrefine sweep)",
    "robustness": "a robustness study (archrefine robustness)",
    "calibrate": "a calibration (archrefine calibrate)",
    "sweep-point": "one point of a sweep",
}
"""What `--resume DIR` says a directory holds, by `run.json`'s kind."""

_current: dict[str, Any] = {}  # the run this process writes: what an interrupt message names


def resume_command(kind: Any, path: Path) -> str | None:
    """The command that continues an interrupted run of `kind` in `path` (None: cannot)."""
    if kind not in RESUMABLE:
        return None
    return f"archrefine {kind} --resume {shlex.quote(str(path))}"


def _again(kind: Any, path: Path) -> str:
    """What to do about an interrupted run in `path`: resume it, or start afresh."""
    command = resume_command(kind, path)
    if command is None:
        return "start afresh with --force"
    return f"continue it with `{command}`, or start afresh with --force"


def open_run(
    path: Path, *, force: bool, kind: str, meta: dict[str, Any] | None = None, fresh: bool = False
) -> Path:
    """Create (or, with `force`, reuse) a run directory and mark it as running by this process;
    with `fresh` too, first remove what an earlier run wrote there (`outputs.OUTPUTS`).

    A directory whose run is still running in another process is refused even with `force`."""
    path = Path(path)
    command = " ".join(["archrefine", *sys.argv[1:]]) if _from_cli() else None
    info = {"kind": kind, "status": "running", "started": utc_now(), "command": command,
            **liveness.this_process()}  # fmt: skip
    check_out(path, force=force)
    try:  # a path inside a file, read-only, too long, a symlink loop: one line, not a trace
        path.mkdir(parents=True, exist_ok=True)
        if force and fresh:
            remove_outputs(path)
        write_json(path / "run.json", {**info, **(meta or {})})
    except OSError as err:
        raise StoreError(f"{path}: cannot hold the run ({err.strerror or err})") from None
    _current.clear()
    _current.update(path=path, kind=kind, command=command)
    return path


def check_out(path: Path, *, force: bool) -> None:
    """Refuse (one line), writing nothing, a `path` that `open_run` would refuse: so a command
    can check its --out before slow preparation (loading a model) and open it after."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path}: exists and is not a directory")
        if path.is_dir() and any(path.iterdir()):
            _may_reuse(path, force)
    except OSError as err:
        raise StoreError(f"{path}: cannot hold the run ({err.strerror or err})") from None


def _may_reuse(path: Path, force: bool) -> None:
    """Refuse (one line, saying what to do) to start a run in a non-empty directory."""
    if not (path / "run.json").exists():
        if force:
            return
        raise StoreError(
            f"{path}: not empty (and holds no run); choose another --out or pass --force"
        )
    try:
        info = read_run(path)
    except StoreError as err:
        if force:
            return
        raise StoreError(f"{err}; choose another --out or pass --force to replace it") from None
    kind, status = info.get("kind") or "unknown kind", info.get("status")
    if status == "running":
        alive = liveness.state(info)
        if alive == "alive":
            raise StoreError(
                f"{path}: already holds a run ({kind}) still running as pid {info['pid']} "
                f"(started {info.get('started')}); wait for it, or stop it (kill {info['pid']})"
            )
        if force:
            return
        if alive == "elsewhere":
            raise StoreError(
                f"{path}: already holds a run ({kind}) running on {info['host']} (pid "
                f"{info['pid']}); if it is gone, {_again(kind, path)}"
            )
        what = "this process's own" if alive == "self" else "interrupted"
        raise StoreError(f"{path}: already holds a run ({kind}, {what}); {_again(kind, path)}")
    if force:
        return
    state = "finished" if status == "complete" else f"status {status!r}"
    raise StoreError(
        f"{path}: already holds a run ({kind}, {state}); choose another --out or pass --force "
        "to replace it"
    )


_LIST_OF_STR = "a list of strings"
_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "kind": ((str,), "a string"),
    "status": ((str,), "a string"),
    "started": ((str,), "a time (string)"),
    "finished": ((str,), "a time (string)"),
    "command": ((str, type(None)), "a string or null"),
    "host": ((str,), "a string"),
    "pid": ((int,), "a process id (integer)"),
    "pid_start": ((int, type(None)), "an integer or null"),
    "seconds": ((int, float), "a number"),
    "files": ((list,), _LIST_OF_STR),
    "resumed": ((list,), "a list of times (strings)"),
}


def read_run(directory: Path) -> dict[str, Any]:
    """A directory's `run.json`, checked: UTF-8 JSON, an object, known fields of the right
    type; anything else is a one-line StoreError naming the file (which is left as it is)."""
    path = Path(directory) / "run.json"
    if path.exists() and not path.is_file():
        raise StoreError(f"{path}: not a regular file; put back the file archrefine wrote")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{path}: no such file") from None
    except OSError as err:
        raise StoreError(f"{path}: cannot read it ({err.strerror or err})") from None
    try:
        info = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise StoreError(f"{path}: not a run record (not UTF-8 text: binary, pickled?)") from None
    except (ValueError, RecursionError) as err:
        why = getattr(err, "msg", None) or type(err).__name__
        raise StoreError(f"{path}: not a run record (not valid JSON: {why})") from None
    if not isinstance(info, dict):
        raise StoreError(f"{path}: not a run record (a JSON {type(info).__name__}, not an object)")
    for key, (types, what) in _FIELDS.items():
        value = info.get(key)
        bad = key in info and (
            not isinstance(value, types)
            or (isinstance(value, bool) and bool not in types)
            or (what.startswith("a list") and not all(isinstance(v, str) for v in value))
        )
        if bad:
            raise StoreError(
                f"{path}: field {key!r} should be {what}, not {json.dumps(value)[:40]}; "
                "fix or delete that field (the file was not changed)"
            )
    return info


def expect_kind(directory: Path, kind: str) -> dict[str, Any] | None:
    """For `--resume DIR`: the run record if `directory` holds a run of `kind`; None if it
    has no run.json (or does not exist); else a one-line error saying what it holds and how
    to resume that."""
    directory = Path(directory)
    if not (directory / "run.json").exists():
        return None  # the caller says what is missing
    info = read_run(directory)
    found = info.get("kind")
    if found == kind:
        return info
    what = KINDS.get(found, f"a run of kind {found!r}") if found else "a run of unknown kind"
    command = resume_command(found, directory)
    then = f"; resume it with `{command}`" if command else " (that kind has no --resume)"
    raise StoreError(f"{directory}: holds {what}, not {KINDS[kind]}{then}")


def refuse_live(directory: Path, info: dict[str, Any]) -> None:
    """Refuse to resume a run whose process (on this host) is still running it."""
    if info.get("status") == "running" and liveness.state(info) == "alive":
        raise StoreError(
            f"{directory}: its run is still running as pid {info['pid']} (started "
            f"{info.get('started')}); wait for it or stop it before resuming"
        )


def resume_run(directory: Path, info: dict[str, Any]) -> None:
    """Mark `directory`'s run as continued by this process (pid, host, start time, and the
    time in `resumed`), refusing if the process that runs it is still alive."""
    directory = Path(directory)
    refuse_live(directory, info)
    resumed = [*info.get("resumed", []), utc_now()]
    update = {"status": "running", **liveness.this_process(), "resumed": resumed}
    write_json(directory / "run.json", {**info, **update})
    _current.clear()
    _current.update(path=directory, kind=info.get("kind"), command=info.get("command"))


def interrupted_message() -> str:
    """What Ctrl-C says: that written files are complete, and the command that continues."""
    done = "interrupted; files already written are complete"
    if not _current:
        return done
    path, kind = _current["path"], _current.get("kind")
    command = resume_command(kind, path)
    if command:
        return f"{done}: continue with `{command}`"
    again = _current.get("command")
    if again and "--force" not in again.split():
        return f"{done}, but {path}/ is unfinished: start again with `{again} --force`"
    return f"{done}, but {path}/ is unfinished: start it again with --force"


def closed_info(path: Path, *, files: Iterable[str], started: float) -> dict[str, Any]:
    """What `close_run` writes to run.json now: complete, when, how long, which files."""
    info = read_run(path)
    info.update(
        status="complete",
        finished=utc_now(),
        seconds=round(time.time() - started, 3),
        files=sorted(files),
    )
    return info


def close_run(
    path: Path,
    *,
    files: Iterable[str] = (),
    started: float = 0.0,
    info: dict[str, Any] | None = None,
) -> None:
    """Mark the run complete in run.json: `info` where `closed_info` made it ahead (a report
    was built from it meanwhile), else made now from `files` and `started`."""
    if info is None:
        info = closed_info(path, files=files, started=started)
    write_json(Path(path) / "run.json", info)
    if _current.get("path") == Path(path):
        _current.clear()


def _from_cli() -> bool:
    argv0 = Path(sys.argv[0])  # the console script, or `python -m archrefine`
    return argv0.name == "archrefine" or (argv0.name, argv0.parent.name) == (
        "__main__.py",
        "archrefine",
    )


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_metrics(path: Path) -> pd.DataFrame:
    """Read a metrics Parquet file (a run directory's, or the file), failing with one line if it
    is missing, corrupt or foreign (`metrics_table.read` says which)."""
    path = Path(path)
    path = path / "metrics.parquet" if path.is_dir() else path
    found = metrics_table.read(path, REQUIRED)
    if isinstance(found, str):
        raise StoreError(f"{path}: {found}")
    return found
