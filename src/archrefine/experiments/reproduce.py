"""`archrefine reproduce`: the four experiments, the figures, and the claims table."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from archrefine import plots
from archrefine.analysis import Phases
from archrefine.config import Config
from archrefine.experiments.claims import (
    Claim,
    as_records,
    detect,
    evaluate,
    paper_plan,
    phase_source,
)
from archrefine.experiments.runner import count_unique, run_plan
from archrefine.store import atomic_write_text, close_run, open_run, write_json, write_parquet

FIGURES = ("fig1_trajectory.png", "fig2_topk.png", "fig3_phases.png", "fig4_schedules.png")
COMPARE = "fig5_compare.png"  # only when the generator is not the paper's


@dataclass
class Reproduction:
    frame: pd.DataFrame
    phases: Phases
    claims: list[Claim]


def conditions(config: Config) -> int:
    """How many distinct simulations `reproduce` will run (for progress bars)."""
    return count_unique(config, paper_plan(config.loop.population, config.generator.kind))


def reproduce(
    config: Config,
    *,
    workers: int | None = None,
    on_done: Callable[[], None] | None = None,
    n_boot: int = 200,
) -> Reproduction:
    """Run the four experiments and check the claims; no I/O."""
    frame = run_plan(
        config,
        paper_plan(config.loop.population, config.generator.kind),
        workers=workers,
        on_done=on_done,
    )
    found = detect(frame, config.schedule.kind, n_boot=n_boot, seed=config.seed)
    return Reproduction(frame, found, evaluate(frame, found))


def write(out: Path, config: Config, rep: Reproduction, *, started: float) -> None:
    """Write data first, then claims and figures; `run.json` is marked complete last."""
    write_parquet(out / "metrics.parquet", rep.frame)
    write_json(out / "claims.json", as_records(rep.claims))
    atomic_write_text(out / "claims.md", claims_markdown(rep.claims, config))
    write_json(out / "phases.json", rep.phases.__dict__)
    draw(out, rep.frame, rep.phases, config.schedule.kind, generator=config.generator.kind)
    close_run(
        out,
        files=[
            "config.toml",
            "metrics.parquet",
            "claims.json",
            "claims.md",
            "phases.json",
            *FIGURES,
            *([COMPARE] if "comparison" in set(rep.frame.experiment) else []),
        ],
        started=started,
    )


def draw(
    out: Path,
    frame: pd.DataFrame,
    found: Phases,
    schedule_kind: str,
    *,
    workers: int = 2,
    generator: str = "this run",
) -> None:
    """Draw the four figures, in parallel processes (matplotlib is single-threaded)."""
    traj = frame[(frame.experiment == "trajectory") & (frame.condition == "baseline")]
    exp, cond = phase_source(frame, schedule_kind)
    phase_run = frame[(frame.experiment == exp) & (frame.condition == cond)]
    jobs = [
        (plots.trajectory, (traj, out / FIGURES[0]), {"found": found}),
        (plots.topk, (frame[frame.experiment == "topk"], out / FIGURES[1]), {}),
        (plots.phases, (phase_run, found, out / FIGURES[2]), {}),
        (plots.schedules, (frame[frame.experiment == "schedules"], out / FIGURES[3]), {}),
    ]
    if "comparison" in set(frame.experiment):
        jobs.append(
            (
                plots.compare,
                (
                    {"paper": frame[frame.experiment == "comparison"], generator: traj},
                    out / COMPARE,
                ),
                {},
            )
        )
    if workers <= 1:
        for fn, args, kw in jobs:
            fn(*args, **kw)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(fn, *args, **kw) for fn, args, kw in jobs]:
            future.result()


def start(out: Path, config: Config, *, force: bool) -> float:
    open_run(
        out, force=force, kind="reproduce", meta={"seed": config.seed, "trials": config.trials}
    )
    atomic_write_text(out / "config.toml", config.to_toml())
    return time.time()


def _verdict(holds: bool | None) -> str:
    return "not measured" if holds is None else "yes" if holds else "**no**"


def _fmt(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items() if k != "balance")
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if value is None:
        return "–"
    return f"{value:g}" if isinstance(value, float) else str(value)


def claims_markdown(claims: list[Claim], config: Config) -> str:
    return claims_table(
        claims,
        f"Claims check ({config.trials} trials, seed {config.seed}, space "
        f"{config.space.kind}, generator {config.generator.kind})",
    )


def claims_table(claims: list[Claim], title: str) -> str:
    """The claims as a Markdown table; a claim whose experiment was not run says so."""
    rows = [
        f"# {title}",
        "",
        "| id | claim | paper | measured | tolerance | holds |",
        "|---|---|---|---|---|---|",
    ]
    for c in claims:
        rows.append(
            f"| {c.id} | {c.claim} | {_fmt(c.paper)} | {_fmt(c.measured)} | "
            f"{c.tolerance} | {_verdict(c.holds)} |"
        )
    held = sum(c.holds is True for c in claims)
    measured = sum(c.holds is not None for c in claims)
    missing = len(claims) - measured
    note = f" ({missing} not measured: their experiments were not run)" if missing else ""
    rows += ["", f"{held} of {measured} claims hold.{note}"]
    return "\n".join(rows) + "\n"
