"""`archrefine robustness`: do the claims hold across seeds and near the chosen parameters?

Three kinds of job, each one `reproduce` (the four experiments, phases, claims; no figures):

* **seed** jobs: the base config at N seeds derived from the root seed;
* **perturb** jobs: one free parameter moved to value·(1 − FRAC) or value·(1 + FRAC), the others
  at their base values, each at its own derived seed; the claim's verdict there is its `holds`;
* **morris** jobs: SALib's Morris design over the same box, all at one derived seed (common
  random numbers, so elementary effects are parameter effects, not seed noise), whose outputs are
  each claim's central measured scalar.

Every seed is `SeedSequence(root, spawn_key=hash(job))` (`sweep.point_seed`): it depends on the
root seed and the job's identity, never on the list's length, and is never the calibration seed.
Each finished job is written atomically to `jobs/<name>.json`; `resume` skips those whose
resolved config matches. docs/robustness.md explains the choices.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from archrefine.core.config import Config, ConfigError, GeneratorConfig, load_config
from archrefine.core.store import StoreError, atomic_write_text, close_run, open_run, write_json
from archrefine.experiments import robustness_report as report
from archrefine.experiments.runner import each_in_processes
from archrefine.experiments.sweep import point_seed

CALIBRATION_SEED = 12345  # scripts/calibrate_paper.py fitted the parameters on it: never reused
CALIBRATION_SEEDS = (CALIBRATION_SEED, 0, 1, 2, 3)  # and checked them on seeds 0-3 (docs/model.md)
OTHER_FREE = (
    "loop.fresh_fraction",
    "loop.novelty_k",
    "schedule.rate",
    "schedule.min_rate",
    "schedule.max_rate",
    "schedule.period",
    "space.known",
    "fitness.k",
)
"""Free parameters outside `generator` (docs/model.md, sources "fitted" and "chosen"); every
numeric field of the paper generator's config is one too, found by `free_parameters`."""
NOT_MODEL = ("kind", "learned")  # generator fields that are not the paper model's numbers


class RobustnessError(ConfigError):
    """A robustness study that cannot run as asked; one-line message."""


@dataclass(frozen=True)
class Settings:
    """What a robustness study runs; saved as settings.json so `--resume` repeats it."""

    seeds: int = 10
    trials: int = 100
    perturb: float = 0.15
    params: tuple[str, ...] | None = None  # None: every free parameter
    trajectories: int = 4  # Morris trajectories r: r·(D + 1) sensitivity jobs
    morris_trials: int | None = None  # None: min(trials, 30)
    levels: int = 4  # Morris grid levels

    def validate(self, source: str | None = None) -> Settings:
        """Refuse a wrong value, naming its option, or its key in `source` (a settings.json)."""

        def refuse(name: str, why: str):
            where = f"{source}: {name.replace('-', '_')}" if source else f"--{name}"
            raise RobustnessError(f"{where}: {why}")

        least = {"seeds": 1, "trials": 1, "trajectories": 2, "morris-trials": 1, "levels": 2}
        for name, low in least.items():
            if (v := getattr(self, name.replace("-", "_"))) is None and name == "morris-trials":
                continue
            if type(v) is not int or v < low:  # not a bool, a float or a string
                kind = "" if type(v) is int else "an integer of "
                refuse(name, f"must be {kind}at least {low} (got {v!r})")
        if isinstance(p := self.perturb, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            refuse("perturb", f"must be in [0, 1) (got {p!r})")
        params = self.params or ()
        if not isinstance(params, tuple) or not all(isinstance(p, str) for p in params):
            refuse("param", f"must be a list of parameter names (got {list(params)!r})")
        if twice := sorted({p for p in params if params.count(p) > 1}):
            refuse("param", f"{', '.join(map(str, twice))} named more than once")
        for p in params:
            if p not in (known := free_parameters()):
                refuse(f"param {p}", f"not a free parameter (one of {', '.join(known)})")
        return self

    @property
    def sensitivity_trials(self) -> int:
        return self.morris_trials or min(self.trials, 30)


def free_parameters() -> list[str]:
    """Every numeric field of the paper generator, then `OTHER_FREE`: a new generator
    parameter joins the study without editing this module."""
    gen = [
        f"generator.{name}"
        for name, f in GeneratorConfig.model_fields.items()
        if name not in NOT_MODEL and f.annotation in (int, float)
    ]
    return gen + [p for p in OTHER_FREE if p not in gen]


def _field(key: str):
    section, name = key.split(".")
    return type(getattr(Config(), section)).model_fields[name]


def bounds(key: str) -> tuple[float, float, bool]:
    """(low, high, integer) allowed for `key`, read from the config's own constraints."""
    f = _field(key)
    lo, hi = -math.inf, math.inf
    for meta in f.metadata:
        if getattr(meta, "ge", None) is not None:
            lo = float(meta.ge)
        if getattr(meta, "gt", None) is not None:
            lo = float(meta.gt) + (1 if f.annotation is int else 1e-9)
        if getattr(meta, "le", None) is not None:
            hi = float(meta.le)
        if getattr(meta, "lt", None) is not None:
            hi = float(meta.lt) - (1 if f.annotation is int else 1e-9)
    return lo, hi, f.annotation is int


def get(config: Config, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def moved(config: Config, key: str, factor: float) -> tuple[float | int | None, str]:
    """`key`'s value × factor, clipped to its range, or None with the reason when that is the
    base value itself or the config refuses it. An integer moves by the nearest integer to
    |value|·|factor − 1| (half up), the same step both ways, so a step that rounds to 0 (for
    `fitness.k` = 1 at ±15%) leaves it where it is."""
    base = get(config, key)
    lo, hi, integer = bounds(key)
    if base == 0:
        return None, "0: a relative move leaves it at 0"
    if integer:
        step = int(math.floor(round(abs(base) * abs(factor - 1), 9) + 0.5))
        want = base + (step if factor > 1 else -step)
    else:
        want = round(base * factor, 6)
    value = min(max(want, lo), hi)
    value = int(value) if integer else round(value, 6)
    if value == base:
        return None, "the move rounds or clips to the base value"
    try:
        config.with_overrides({key: value})
    except ConfigError as err:
        return None, str(err)
    return value, "clipped" if value != want else ""


@dataclass(frozen=True)
class Job:
    name: str
    kind: str  # seed, perturb, morris
    config: Config
    meta: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return hashlib.sha256(self.config.model_dump_json().encode()).hexdigest()[:16]


def derived_seed(root: int, **identity: Any) -> int:
    """A job's seed from the root seed and its identity; never one the calibration used."""
    seed = point_seed(root, {"robustness": identity})
    while seed in CALIBRATION_SEEDS:
        seed = point_seed(seed, {"robustness": identity})
    return seed


def design(base: Config, s: Settings) -> dict[str, Any]:
    """The study's parameters, their moves and the Morris problem (no simulation)."""
    params = list(s.params or free_parameters())
    table: dict[str, dict] = {}
    for p in params:
        row: dict[str, Any] = {"value": get(base, p), "integer": bounds(p)[2]}
        for sign, factor in (("-", 1 - s.perturb), ("+", 1 + s.perturb)):
            row[sign], why = moved(base, p, factor) if s.perturb > 0 else (None, "perturb 0")
            if why:
                row[f"note{sign}"] = why
        table[p] = row
    movable = [p for p in params if table[p]["-"] is not None or table[p]["+"] is not None]
    problem = {
        "num_vars": len(movable),
        "names": movable,
        "bounds": [
            [
                table[p]["-"] if table[p]["-"] is not None else table[p]["value"],
                table[p]["+"] if table[p]["+"] is not None else table[p]["value"],
            ]
            for p in movable
        ],
    }
    return {"parameters": table, "problem": problem}


def morris_sample(problem: dict, s: Settings, root: int) -> np.ndarray:
    from SALib.sample import morris

    seed = derived_seed(root, kind="morris-design") % 2**32
    return morris.sample(problem, s.trajectories, num_levels=s.levels, seed=seed)


def plan(base: Config, s: Settings) -> tuple[list[Job], dict[str, Any]]:
    """Every job of the study, seeds first (so an interrupted study has its seed verdicts)."""
    root = base.seed
    jobs = []
    for i in range(s.seeds):
        seed = derived_seed(root, kind="seed", index=i)
        cfg = base.with_overrides({"trials": s.trials, "seed": seed})
        jobs.append(Job(f"seed-{i:03d}", "seed", cfg, {"index": i, "seed": seed}))
    info = design(base, s)
    if s.perturb == 0:
        return jobs, info
    for p, row in info["parameters"].items():
        for sign in ("-", "+"):
            if row[sign] is None:
                continue
            seed = derived_seed(root, kind="perturb", param=p, direction=sign)
            cfg = base.with_overrides({"trials": s.trials, "seed": seed, p: row[sign]})
            name = f"perturb-{p}-{'minus' if sign == '-' else 'plus'}"
            jobs.append(Job(name, "perturb", cfg, {"param": p, "direction": sign, "seed": seed}))
    problem = info["problem"]
    if problem["num_vars"] == 0:
        return jobs, info
    x = morris_sample(problem, s, root)
    info["morris_x"] = x.tolist()
    seed = derived_seed(root, kind="morris")
    for i, row in enumerate(x):
        over = {
            p: int(math.floor(v + 0.5)) if info["parameters"][p]["integer"] else float(v)
            for p, v in zip(problem["names"], row)
        }
        cfg = base.with_overrides({"trials": s.sensitivity_trials, "seed": seed, **over})
        jobs.append(Job(f"morris-{i:04d}", "morris", cfg, {"index": i, "seed": seed}))
    return jobs, info


def evaluate_config(config_json: str) -> list[dict]:
    """One job: `reproduce`'s own code path (experiments, phases, claims), no figures."""
    from archrefine.experiments.reproduce import reproduce

    config = Config.model_validate_json(config_json)
    rows = []
    for c in reproduce(config, workers=1).claims:
        name, value = report.scalar(c.id, c.measured)
        conf = getattr(c, "confidence", None)
        rows.append(
            {
                "id": c.id,
                "holds": c.holds,
                "confidence": conf,
                "measured": c.measured,
                "scalar_name": name,
                "scalar": None if math.isnan(value) else value,
            }
        )
    return rows


def _timed(runner: Callable[[str], list[dict]], config_json: str) -> tuple[list[dict], float]:
    began = time.time()
    return runner(config_json), time.time() - began


def job_path(out: Path, job: Job) -> Path:
    return Path(out) / "jobs" / f"{job.name}.json"


def load_done(out: Path, job: Job) -> dict | None:
    """The stored result of `job` if it finished with this very config, else None."""
    try:
        saved = json.loads(job_path(out, job).read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and saved.get("key") == job.key else None


def run_jobs(
    out: Path,
    jobs: list[Job],
    *,
    workers: int,
    runner: Callable[[str], list[dict]] = evaluate_config,
    on_job: Callable[[Job, str], None] | None = None,
) -> dict[str, dict]:
    """Run the jobs not already stored in `out/jobs/`, storing each as it finishes."""
    results: dict[str, dict] = {}
    todo = []
    for job in jobs:
        saved = load_done(out, job)
        if saved is None:
            todo.append(job)
            continue
        results[job.name] = saved
        if on_job:
            on_job(job, "skipped")

    def finish(job: Job, claims: list[dict], seconds: float) -> None:
        record = {
            "name": job.name,
            "kind": job.kind,
            "key": job.key,
            **job.meta,
            "seconds": round(seconds, 3),
            "claims": claims,
        }
        write_json(job_path(out, job), record)
        results[job.name] = record
        if on_job:
            on_job(job, "ran")

    run = functools.partial(_timed, runner)  # in at most `workers` processes, and no more than jobs
    each_in_processes(run, todo, lambda job: job.config.model_dump_json(), finish, workers)
    return results


def run_robustness(
    base: Config,
    settings: Settings,
    out: Path,
    *,
    workers: int | None = None,
    force: bool = False,
    resume: bool = False,
    runner: Callable[[str], list[dict]] = evaluate_config,
    on_job: Callable[[Job, str], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
    figure: bool = True,
) -> dict[str, Any]:
    """Run (or, with `resume`, finish) a robustness study in `out`; return robustness.json.
    `force` starts afresh in a directory that holds a run (its job records are removed)."""
    from archrefine.experiments.reproduce import check_plan

    settings.validate()
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise RobustnessError(f"--workers: must be at least 1 (got {workers})")
    check_plan(base)
    out = Path(out)
    if resume:
        saved_base, saved = load_study(out)
        if saved_base != base or saved != settings:
            raise StoreError(f"{out}: --resume continues with the study's own settings")
    jobs, info = plan(base, settings)
    if on_plan:
        on_plan(len(jobs))
    meta = {"seed": base.seed, **asdict(settings), "jobs": len(jobs), "pid": os.getpid()}
    open_run(out, force=force or resume, kind="robustness", meta=meta, fresh=not resume)
    started = time.time()
    atomic_write_text(out / "config.toml", base.to_toml())
    write_json(out / "settings.json", asdict(settings))
    n = min(workers or os.cpu_count() or 1, max(len(jobs), 1))
    results = run_jobs(out, jobs, workers=n, runner=runner, on_job=on_job)
    summary = report.aggregate(settings, jobs, results, info)
    write_json(out / "robustness.json", summary)
    atomic_write_text(out / "robustness.md", report.markdown(summary))
    files = ["config.toml", "settings.json", "jobs", "robustness.json", "robustness.md"]
    if figure:
        report.figure(summary, out / "robustness.png")
        files.append("robustness.png")
    close_run(out, files=files, started=started)
    return summary


def load_study(out: Path) -> tuple[Config, Settings]:
    """A study directory's base config and settings; errors name the file and the key."""
    out, path = Path(out), Path(out) / "settings.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        raise StoreError(
            f"{out}: no robustness study to resume (no readable settings.json)"
        ) from None
    if not isinstance(raw, dict) or (other := set(raw) - set(Settings.__dataclass_fields__)):
        why = f"unknown keys {', '.join(sorted(other))}" if isinstance(raw, dict) else "not a table"
        raise StoreError(f"{path}: not a robustness study's settings ({why})")
    params = raw.get("params") or None
    settings = Settings(**{**raw, "params": tuple(params) if isinstance(params, list) else params})
    settings.validate(str(path))
    return load_config(out / "config.toml"), settings  # its errors name config.toml
