"""Parameter sweeps: a grid of config overrides, each point simulated with its own derived seed,
on a local process pool or on Ray, written into one sweep directory (docs/sweeps.md).

A point's seed is `SeedSequence(sweep_seed, spawn_key=hash(point))`: it depends on the sweep
seed and the point's own (validated, key-sorted) overrides, never on its index in the grid or on
when a worker ran it. Growing a grid leaves existing points' seeds alone, and every backend
produces the same bytes. Ray is imported only when `backend="ray"`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from archrefine.core.config import Config, ConfigError, load_config
from archrefine.core.config_base import parse_value, set_dotted
from archrefine.core.store import (
    StoreError,
    atomic_write_text,
    close_run,
    open_run,
    read_metrics,
    write_json,
    write_parquet,
)
from archrefine.experiments.runner import each_in_processes
from archrefine.sim.budget import check_memory
from archrefine.sim.loop import METRICS, simulate

BACKENDS = ("local", "ray")


class SweepError(ConfigError):
    """A sweep that cannot run as asked (bad grid, missing backend); one-line message."""


@dataclass(frozen=True)
class Point:
    """One grid point: its overrides (validated values, in `--set` order), name, slug, seed."""

    overrides: dict[str, Any]
    name: str
    slug: str
    seed: int
    config: Config


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _slug(name: str) -> str:
    """A directory name: the point's name where it is safe, else sanitized plus a short hash."""
    safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)
    if safe == name and len(name) <= 120:
        return name
    return f"{safe[:100]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def point_seed(sweep_seed: int, overrides: dict[str, Any]) -> int:
    """The point's seed: a stable hash of its key-sorted overrides spawns a child of the sweep
    seed. Independent of the point's position in the grid and of the other points."""
    canonical = json.dumps(sorted(overrides.items()), separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    key = tuple(int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4))
    hi, lo = np.random.SeedSequence(sweep_seed, spawn_key=key).generate_state(2, np.uint32)
    return ((int(hi) << 32) | int(lo)) & (2**63 - 1)  # TOML integers are signed 64-bit


def _dotted(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data


def parse_sets(sets: list[str]) -> dict[str, list[Any]]:
    """`["loop.top_k=1,2", "schedule.kind=cyclic"]` → `{"loop.top_k": [1, 2], ...}`."""
    grid: dict[str, list[Any]] = {}
    for item in sets:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SweepError(f"--set {item!r}: expected dotted.key=value1,value2,...")
        if key in grid:
            raise SweepError(f"--set {key}: given twice; list all its values in one --set")
        values = [v.strip() for v in text.split(",")]
        if not text.strip() or any(not v for v in values):
            raise SweepError(f"--set {item!r}: empty value in the list")
        grid[key] = [parse_value(v) for v in values]
    return grid


def expand(base: Config, sets: list[str] | dict[str, list[Any]]) -> list[Point]:
    """The grid product of `sets` over `base`, each point validated and named."""
    grid = parse_sets(sets) if isinstance(sets, list) else {k: list(v) for k, v in sets.items()}
    if not grid:
        raise SweepError("a sweep needs at least one --set dotted.key=value1,value2,...")
    for key in grid:
        try:
            set_dotted(base.model_dump(), key, None)  # an unknown key or section
        except ConfigError as err:
            raise SweepError(str(err)) from None
    points: list[Point] = []
    seen: dict[str, str] = {}
    for combo in itertools.product(*grid.values()):
        raw = dict(zip(grid, combo))
        label = ",".join(f"{k}={_fmt(v)}" for k, v in raw.items())
        try:
            config = base.with_overrides(raw)
        except ConfigError as err:
            raise SweepError(f"point {label}: {err}") from None
        resolved = config.model_dump()
        overrides = {k: _dotted(resolved, k) for k in grid}
        name = ",".join(f"{k}={_fmt(v)}" for k, v in overrides.items())
        if name in seen:
            raise SweepError(f"point {name}: listed twice ({seen[name]} and {label})")
        seen[name] = label
        seed = point_seed(base.seed, overrides)
        points.append(
            Point(overrides, name, _slug(name), seed, config.with_overrides({"seed": seed}))
        )
    return points


def _simulate(config: Config) -> tuple[pd.DataFrame, float]:
    began = time.time()
    return simulate(config).metrics, time.time() - began


def point_done(path: Path, point: Point) -> bool:
    """Whether `path` holds this point finished: run.json complete, the same resolved config,
    and a readable metrics file with every (trial, cycle) row."""
    try:
        info = json.loads((path / "run.json").read_text())
        if info.get("status") != "complete":
            return False
        if (path / "config.toml").read_text() != point.config.to_toml():
            return False
        frame = read_metrics(path)
    except (OSError, ValueError, StoreError):
        return False
    cfg = point.config
    return len(frame) == cfg.trials * cfg.loop.cycles and frame.cycle.max() == cfg.loop.cycles


def _write_point(path: Path, point: Point, frame: pd.DataFrame, seconds: float) -> None:
    (path / "run.json").unlink(missing_ok=True)  # run.json, written last, marks it complete
    atomic_write_text(path / "config.toml", point.config.to_toml())
    write_parquet(path / "metrics.parquet", frame)
    info = {"kind": "sweep-point", "status": "complete", "point": point.name,
            "overrides": point.overrides, "seed": point.seed, "seconds": round(seconds, 3),
            "files": ["config.toml", "metrics.parquet"]}  # fmt: skip
    write_json(path / "run.json", info)


def _local(todo, workers, finish) -> None:
    each_in_processes(_simulate, todo, lambda point: point.config, finish, workers)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise SweepError("--backend ray needs Ray: pip install 'archrefine[ray]'") from None
    return ray


def _ray(todo, workers, address, finish) -> None:
    import logging

    ray = _import_ray()

    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address or None, num_cpus=None if address else workers,
                     include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)  # fmt: skip
        except (ConnectionError, RuntimeError, ValueError) as err:
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise SweepError(f"--address {address}: cannot start or reach Ray ({first})") from None
    pending: dict = {}
    try:
        task = ray.remote(num_cpus=1)(_simulate)
        pending = {task.remote(p.config): p for p in todo}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                finish(pending.pop(ref), *ray.get(ref))
    finally:
        for ref in pending:
            ray.cancel(ref)
        if started:
            ray.shutdown()


def run_sweep(
    base: Config,
    points: list[Point],
    out_dir: Path,
    *,
    backend: str = "local",
    address: str | None = None,
    workers: int | None = None,
    on_point: Callable[[Point, str], None] | None = None,
    force: bool = False,
    resume: bool = False,
    figure: bool = True,
) -> pd.DataFrame:
    """Run every point not already finished in `out_dir/points/`, then write the combined
    `metrics.parquet` (override columns, `point`, then the loop's) and return it.

    `on_point(point, "ran" | "skipped")` is called once per point. `resume` continues the sweep
    in `out_dir` (same base config); `force` starts afresh in a non-empty directory."""
    if backend not in BACKENDS:
        raise SweepError(f"backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if not points:
        raise SweepError("a sweep needs at least one point")
    if backend == "ray":
        from archrefine.sandbox.ray_backend import unreachable

        _import_ray()  # missing Ray, or a cluster that does not answer, fails before the
        if why := unreachable(address):  # directory is made
            raise SweepError(f"--address {address}: cannot reach Ray ({why})")
    out_dir = Path(out_dir)
    if resume:
        saved = out_dir / "config.toml"
        if not (out_dir / "sweep.json").exists() or not saved.exists():
            raise StoreError(f"{out_dir}: no sweep to resume (no sweep.json or config.toml)")
        if load_config(saved) != base:
            raise StoreError(f"{out_dir}: --resume needs the sweep's own base config.toml")
    for p in points:  # a point far too large for memory fails before anything is written
        check_memory(p.config)
    meta = {"seed": base.seed, "trials": base.trials, "backend": backend, "points": len(points)}
    open_run(out_dir, force=force or resume, kind="sweep", meta=meta, fresh=not resume)
    started = time.time()
    atomic_write_text(out_dir / "config.toml", base.to_toml())
    grid: dict[str, list] = {}
    for p in points:
        for k, v in p.overrides.items():
            if v not in grid.setdefault(k, []):
                grid[k].append(v)
    write_json(out_dir / "sweep.json", {
        "seed": base.seed, "backend": backend, "address": address, "grid": grid,
        "sets": [f"{k}={','.join(_fmt(v) for v in vs)}" for k, vs in grid.items()],
        "points": [{"name": p.name, "dir": f"points/{p.slug}", "seed": p.seed,
                    "overrides": p.overrides} for p in points]})  # fmt: skip
    todo = []
    for p in points:
        if not point_done(out_dir / "points" / p.slug, p):
            todo.append(p)
        elif on_point is not None:
            on_point(p, "skipped")

    def finish(point: Point, frame: pd.DataFrame, seconds: float) -> None:
        _write_point(out_dir / "points" / point.slug, point, frame, seconds)
        if on_point is not None:
            on_point(point, "ran")

    if todo and backend == "ray":
        _ray(todo, workers, address, finish)
    elif todo:
        _local(todo, workers or min(len(todo), os.cpu_count() or 1), finish)
    combined = combine(out_dir, points)
    write_parquet(out_dir / "metrics.parquet", combined)
    files = ["config.toml", "sweep.json", "metrics.parquet", "points"]
    if figure:
        from archrefine.experiments import plots

        plots.overlay(per_point(combined), out_dir / "sweep.png", title="Sweep")
        files.append("sweep.png")
    close_run(out_dir, files=files, started=started)
    return combined


def combine(out_dir: Path, points: list[Point]) -> pd.DataFrame:
    """The points' metrics, read back from their files, in grid order, with their columns."""
    frames = []
    for p in points:
        frame = read_metrics(Path(out_dir) / "points" / p.slug)
        for i, (key, value) in enumerate(p.overrides.items()):
            frame.insert(i, key, value)
        frame.insert(0, "point", p.name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def per_point(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A combined sweep frame split by point, in the order the points appear."""
    return {name: sel for name, sel in frame.groupby("point", sort=False)}


def final_means(frame: pd.DataFrame) -> pd.DataFrame:
    """Per point: the means over trials of its last cycle's metrics."""
    rows = {}
    for name, sel in per_point(frame).items():
        rows[name] = sel[sel.cycle == sel.cycle.max()][list(METRICS)].mean()
    return pd.DataFrame.from_dict(rows, orient="index")
