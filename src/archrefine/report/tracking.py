"""Experiment tracking: log a finished run directory to MLflow, as researchers log training runs.

Tracking reads what a command has already written (config.toml, metrics.parquet, claims.json,
run.json and the files it lists), so it never changes a result, and a tracking failure (no
server, a bad URI, a full disk on the server) costs a one-line warning, never the run: the
directory stays complete and `archrefine track DIR` logs it later. What lands where
(docs/tracking.md): one MLflow run per directory, with the flattened config as params, the
claims as metrics and the output files as artifacts; the per-cycle means over trials as metrics
with step = cycle, on that run (run, loop) or on one nested run per condition (reproduce) or per
grid point (sweep), which the MLflow UI shows folded under their parent.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archrefine.core.config import ConfigError, TrackingConfig

if TYPE_CHECKING:  # pandas loads when a run is logged: `archrefine run` without it never does
    import pandas as pd

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "BACKENDS",
    "Tracker",
    "TrackingUnavailable",
    "flatten",
    "for_directory",
    "log_directory",
    "start",
]

BACKENDS = ("none", "mlflow")
INSTALL = "pip install 'archrefine[track]'"
HTTP_DEFAULTS = {  # a server that is down costs seconds, not MLflow's minutes of retries
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
GROUPS = ("experiment", "condition")  # a reproduce frame's conditions: one nested run each
NOT_METRICS = {"trial", "cycle", "point", *GROUPS}
MAX_PARAMS, MAX_METRICS, MAX_VALUE = 100, 1000, 6000  # MLflow's log_batch and param limits

Warn = Callable[[str], None]


class TrackingUnavailable(ConfigError):
    """`--track mlflow` without MLflow installed (one line, with the command that installs it)."""


def _stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def _one_line(err: BaseException) -> str:
    """An MLflow error in one short line (its messages run to several sentences and lines)."""
    text = " ".join(str(err).split()) or type(err).__name__
    if "MLFLOW_ALLOW_FILE_STORE" in text:
        return (
            "this MLflow refuses file stores: use sqlite:///mlflow.db or a server, "
            "or set MLFLOW_ALLOW_FILE_STORE=true"
        )
    return text if len(text) <= 200 else text[:197] + "..."


def _resolve(tracking: TrackingConfig, track: str | None) -> str:
    backend = tracking.backend if track is None else track
    if backend not in BACKENDS:
        raise ConfigError(f"--track: {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "mlflow" and importlib.util.find_spec("mlflow") is None:
        raise TrackingUnavailable(f"--track mlflow needs MLflow: {INSTALL}")
    return backend


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """Short HTTP retries unless the user set their own; MLflow's INFO lines kept off stderr."""
    added = {k: v for k, v in HTTP_DEFAULTS.items() if k not in os.environ}
    os.environ.update(added)
    logger, level = logging.getLogger("mlflow"), None
    try:
        import mlflow  # noqa: F401 - its import sets its loggers' levels: quieten them after it

        level = logger.level
        logger.setLevel(max(level, logging.WARNING))
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
        if level is not None:
            logger.setLevel(level)


class Tracker:
    """Where a command's directory is logged when it is finished; `log` never raises.

    Made by `start` before the command writes anything, so a missing MLflow stops it at once
    (exit 2) and a store that cannot be opened is said before the run, not after."""

    def __init__(
        self, uri: str | None = None, experiment: str = "", warn: Warn = _stderr, note: Warn = _note
    ) -> None:
        self.uri, self.experiment, self.warn, self.note = uri, experiment, warn, note

    def log(self, directory: Path) -> str | None:
        """Log `directory`; return the MLflow run id, or None (after a warning) if it failed."""
        if self.uri is None:
            return None
        run_id = log_directory(directory, self.uri, self.experiment, warn=self.warn)
        if run_id is not None:
            self.note(
                f"tracked: MLflow run {run_id} in experiment {self.experiment!r} at {self.uri}"
            )
        return run_id


def start(tracking: TrackingConfig, track: str | None = None, *, warn: Warn = _stderr) -> Tracker:
    """The tracker a command uses: `track` (the `--track` option) overrides the config's
    backend. ConfigError for an unknown backend or a missing MLflow; a store that cannot be
    opened (bad URI, missing driver) is a warning, and the command runs untracked."""
    if _resolve(tracking, track) == "none":
        return Tracker(warn=warn)
    uri = tracking.uri
    try:
        with _quiet_mlflow():
            import mlflow
            from mlflow.tracking import MlflowClient

            uri = uri or mlflow.get_tracking_uri()  # $MLFLOW_TRACKING_URI, else MLflow's default
            MlflowClient(tracking_uri=uri)  # opens the store: no network call yet
    except Exception as err:  # noqa: BLE001 - tracking must never stop the run
        warn(f"tracking off for this run: cannot open the MLflow store {uri!r} ({_one_line(err)})")
        return Tracker(warn=warn)
    return Tracker(uri, tracking.experiment, warn)


def for_directory(
    directory: Path,
    uri: str | None = None,
    experiment: str | None = None,
    *,
    warn: Warn = _stderr,
    incomplete: bool = False,
) -> Tracker:
    """A tracker for logging an existing directory (`archrefine track DIR`): MLflow, at `uri`
    and `experiment` if given, else at those of the directory's own `[tracking]` section.
    A directory whose run did not finish (interrupted, failed, still running) is refused in
    one line unless `incomplete` (it is then logged as KILLED); so is an empty experiment."""
    from archrefine.core.config import validate_config
    from archrefine.core.store import StoreError, read_run

    directory = Path(directory)
    if not (directory / "run.json").is_file():
        raise StoreError(
            f"{directory}: no run.json (not a run, reproduce, sweep or loop directory)"
        )
    if experiment is not None and not experiment.strip():
        raise ConfigError("--experiment: an empty name; name the MLflow experiment to log to")
    status = read_run(directory).get("status")
    if status != "complete" and not incomplete:
        raise StoreError(
            f"{directory}: its run did not finish (status {status!r}); finish it first (its "
            "--resume), or pass --incomplete to log it as KILLED"
        )
    try:
        saved = tomllib.loads((directory / "config.toml").read_text()).get("tracking", {})
    except (OSError, ValueError):
        saved = {}
    try:
        base = validate_config(saved if isinstance(saved, dict) else {}, TrackingConfig)
    except ConfigError as err:
        raise ConfigError(f"{directory}/config.toml: tracking.{err}") from None
    chosen = {"backend": "mlflow", "uri": base.uri if uri is None else uri}
    chosen["experiment"] = (base.experiment if experiment is None else experiment) or "archrefine"
    return start(TrackingConfig(**chosen), warn=warn)


def log_directory(
    directory: Path, uri: str, experiment: str = "archrefine", *, warn: Warn = _stderr
) -> str | None:
    """Log a finished run, reproduce, sweep or loop directory to the MLflow store at `uri`.
    Returns the parent MLflow run's id; on any failure, warns in one line and returns None."""
    directory = Path(directory)
    try:
        with _quiet_mlflow():
            return _log(directory, uri, experiment or "archrefine")
    except _Unreadable as err:  # the directory's own file, not MLflow: its files are not whole
        warn(f"tracking: {directory} not logged to MLflow: {err}; repair or re-create it first")
        return None
    except Exception as err:  # noqa: BLE001 - a tracking failure never fails the command
        warn(
            f"tracking: {directory} not logged to MLflow at {uri} ({_one_line(err)}); its files "
            f"are complete: `archrefine track {directory}` logs it later"
        )
        return None


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys, values as TOML would write them."""
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out[f"{prefix}{key}"] = text[:MAX_VALUE]
    return out


def _read_config(path: Path) -> dict[str, str]:
    return flatten(tomllib.loads(path.read_text())) if path.is_file() else {}


def _millis(stamp: Any) -> int | None:
    try:
        return int(datetime.fromisoformat(str(stamp)).timestamp() * 1000)
    except (TypeError, ValueError):
        return None


class _Unreadable(Exception):
    """One of the logged directory's own files cannot be read (not an MLflow failure)."""


def _local(path: Path, read: Callable[[Path], Any]) -> Any:
    """`read(path)` of a file of the directory; any failure is `_Unreadable` naming it."""
    try:
        return read(path)
    except Exception as err:  # noqa: BLE001 - a damaged file fails in any reader's own way
        raise _Unreadable(f"{path} cannot be read ({_one_line(err)})") from None


def _parquet(path: Path) -> pd.DataFrame:
    import pandas as pd

    return pd.read_parquet(path)


def _cycle_metrics(frame: pd.DataFrame, stamp: int) -> list:
    """Each numeric column's mean over trials per cycle, as MLflow metrics with step = cycle."""
    import pandas as pd
    from mlflow.entities import Metric

    columns = [
        c for c in frame.columns
        if c not in NOT_METRICS and pd.api.types.is_numeric_dtype(frame[c])
        and not pd.api.types.is_bool_dtype(frame[c])
    ]  # fmt: skip
    means = frame.groupby("cycle", sort=True)[columns].mean()
    return [
        Metric(col, float(value), stamp, int(cycle))
        for col in columns
        for cycle, value in means[col].items()
        if math.isfinite(value)
    ]


def _claim_metrics(path: Path, stamp: int) -> list:
    """Each claim's verdict (holds: 0/1) and bootstrap confidence, as metrics `C1.holds`, ..."""
    from mlflow.entities import Metric

    if not path.is_file():
        return []
    out = []
    for claim in json.loads(path.read_text()):
        out.append(Metric(f"{claim['id']}.holds", float(bool(claim["holds"])), stamp, 0))
        if claim.get("confidence") is not None:
            out.append(Metric(f"{claim['id']}.confidence", float(claim["confidence"]), stamp, 0))
    return out


class _Session:
    """One directory's logging: the client, its experiment, the tags every run carries."""

    def __init__(self, directory: Path, uri: str, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        info = json.loads((directory / "run.json").read_text())
        if not isinstance(info, dict):
            raise ValueError("run.json is not a JSON object")
        self.directory, self.info = directory, info
        self.kind = str(info.get("kind") or "run")
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        self.exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.stamp = _millis(info.get("finished")) or int(time.time() * 1000)
        self.status = "FINISHED" if info.get("status") == "complete" else "KILLED"
        self.tags = {
            "archrefine.kind": self.kind,
            "archrefine.directory": str(directory.resolve()),
            "archrefine.status": str(info.get("status")),
            "archrefine.command": str(info.get("command") or ""),
        }

    def new_run(self, name: str, params: dict[str, str], metrics: list, **tags: str) -> str:
        from mlflow.entities import Param

        run = self.client.create_run(
            self.exp_id, start_time=_millis(self.info.get("started")), run_name=name,
            tags={**self.tags, **tags},
        )  # fmt: skip
        run_id = run.info.run_id
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS):
            self.client.log_batch(run_id, params=items[i : i + MAX_PARAMS])
        for i in range(0, len(metrics), MAX_METRICS):
            self.client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS])
        return run_id

    def cycles(self, frame: pd.DataFrame) -> list:
        return _cycle_metrics(frame, self.stamp)

    def children(self, parent: str, frame: pd.DataFrame | None) -> list[str]:
        """One nested run per sweep point (its own config as params) or reproduce condition."""
        runs, nest = [], {"mlflow.parentRunId": parent}
        if self.kind == "sweep":
            sweep = json.loads((self.directory / "sweep.json").read_text())
            for point in sweep.get("points", []):
                where = self.directory / point["dir"]
                metrics = _local(where / "metrics.parquet", lambda p: self.cycles(_parquet(p)))
                params = _local(where / "config.toml", _read_config)
                runs.append(self.new_run(point["name"], params, metrics, **nest))
        elif frame is not None and set(GROUPS) <= set(frame.columns):
            for (exp, cond), sel in frame.groupby(list(GROUPS), sort=False):
                params = {"experiment": str(exp), "condition": str(cond)}
                metrics = self.cycles(sel)
                runs.append(self.new_run(f"{exp}/{cond}", params, metrics, **nest))
        return runs

    def artifacts(self, parent: str) -> None:
        """run.json, every file (or folder: a sweep's points/) it lists, and report.html."""
        listed = ["run.json", *self.info.get("files", []), "report.html"]
        for name in dict.fromkeys(listed):
            path = self.directory / name
            if path.is_dir():
                self.client.log_artifacts(parent, str(path), artifact_path=name)
            elif path.is_file():
                self.client.log_artifact(parent, str(path))


def _log(directory: Path, uri: str, experiment: str) -> str:
    metrics_file = directory / "metrics.parquet"  # the directory's files, read before MLflow's
    frame = _local(metrics_file, _parquet) if metrics_file.is_file() else None
    params = _local(directory / "config.toml", _read_config)
    session = _Session(directory, uri, experiment)
    nested = session.kind == "sweep" or (frame is not None and set(GROUPS) <= set(frame.columns))
    own = _local(directory / "claims.json", lambda p: _claim_metrics(p, session.stamp))
    if frame is not None and not nested:
        own += _local(metrics_file, lambda _: session.cycles(frame))
    parent = session.new_run(directory.name, params, own)
    try:
        runs = [*session.children(parent, frame), parent]
        session.artifacts(parent)
        for run_id in runs:
            session.client.set_terminated(run_id, status=session.status, end_time=session.stamp)
    except BaseException:
        with contextlib.suppress(Exception):  # best effort: the UI shows it failed, not running
            session.client.set_terminated(parent, status="FAILED", end_time=session.stamp)
        raise
    return parent
