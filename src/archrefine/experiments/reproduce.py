"""`archrefine reproduce`: the four experiments, the figures, and the claims table."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd

from archrefine.core.analysis import Phases
from archrefine.core.config import Config, ConfigError
from archrefine.core.store import (
    StoreError,
    atomic_write_text,
    close_run,
    open_run,
    write_json,
    write_parquet,
)
from archrefine.experiments import intervene
from archrefine.experiments.claims import (
    Claim,
    as_records,
    detect,
    evaluate,
    paper_plan,
    phase_source,
)
from archrefine.experiments.runner import call_held, count_unique, forked_pool, in_child, run_plan

FIGURES = ("fig1_trajectory.png", "fig2_topk.png", "fig3_phases.png", "fig4_schedules.png")
COMPARE = "fig5_compare.png"  # only when the generator is not the paper's
MIN_CYCLES = 2


@dataclass
class Reproduction:
    frame: pd.DataFrame
    phases: Phases
    claims: list[Claim]


def plan(config: Config) -> dict[str, dict[str, dict]]:
    """The paper's four experiments, the schedules experiment with one condition per
    intervention besides (docs/interventions.md; the claims read only the paper's conditions)."""
    experiments = paper_plan(config.loop.population, config.generator.kind)
    extra = intervene.conditions(config.generator.kind)
    experiments["schedules"] = {**experiments["schedules"], **extra}
    return experiments


def conditions(config: Config) -> int:
    """How many distinct simulations `reproduce` will run (for progress bars)."""
    return count_unique(config, plan(config))


def reproduce(
    config: Config,
    *,
    workers: int | None = None,
    on_done: Callable[[], None] | None = None,
    n_boot: int = 200,
) -> Reproduction:
    """Run the four experiments and check the claims; no I/O. With more than one process
    (`workers`, default one per core) the claims are checked in a short-lived process of their
    own: scipy and ruptures (~60 MB) and the bootstrap arrays never enter this one, which goes
    on to write the files and the report."""
    check_plan(config)
    frame = run_plan(
        config,
        plan(config),
        workers=workers,
        on_done=on_done,
    )
    if (workers or os.cpu_count() or 1) > 1:
        found, claims = in_child(_analysis, frame, config, n_boot)
    else:
        found, claims = _analysis(frame, config, n_boot)
    return Reproduction(frame, found, claims)


def _analysis(frame: pd.DataFrame, config: Config, n_boot: int) -> tuple[Phases, list[Claim]]:
    """The phases found and the claims checked on `frame`."""
    found = detect(frame, config.schedule.kind, n_boot=n_boot, seed=config.seed)
    claims = evaluate(
        frame,
        found,
        schedule_kind=config.schedule.kind,
        period=config.schedule.period,
        n_boot=n_boot,
        seed=config.seed,
    )
    return found, claims


def write(out: Path, config: Config, rep: Reproduction, *, started: float) -> None:
    """Write data, claims and figures; `run.json` is marked complete last. The figures' processes
    start first and draw while this one writes the data: forked before the writing, they do not
    inherit its memory (pyarrow's buffers)."""
    with drawing(
        out,
        rep.frame,
        rep.phases,
        config.schedule.kind,
        generator=config.generator.kind,
        period=config.schedule.period,
        named=phases_found(rep.claims),
    ):
        write_parquet(out / "metrics.parquet", rep.frame)
        _release_arrow_memory()
        write_json(out / "claims.json", as_records(rep.claims))
        atomic_write_text(out / "claims.md", claims_markdown(rep.claims, config))
        write_json(out / "phases.json", phases_record(rep.phases))
        table = intervene.conditions_table(rep.frame, config.generator.kind)
        write_json(out / "interventions.json", table)
    close_run(
        out,
        files=[
            "config.toml",
            "metrics.parquet",
            "claims.json",
            "claims.md",
            "phases.json",
            "interventions.json",
            *FIGURES,
            *([COMPARE] if "comparison" in set(rep.frame.experiment) else []),
        ],
        started=started,
    )


def _release_arrow_memory() -> None:
    """Hand pyarrow's freed buffers back to the system: its allocator (mimalloc, jemalloc) keeps
    them for reuse, ~40 MB after writing metrics.parquet, which the report would build on."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def phases_record(found: Phases) -> dict:
    """phases.json's content: cycle positions to 4 significant digits and R² to 6, so the file
    says 16.55, not the float sum 16.549999999999983 (a kink is not placed to 0.01 cycle; the R²
    gains C1 weighs against 0.02 are exact to 1e-5)."""

    def rounded(values, digits: int) -> list[float]:
        return [float(f"{v:.{digits}g}") for v in values]

    record = dict(found.__dict__)
    for key in ("boundaries", "low", "high", "three_phase_fit", "three_phase_low",
                "three_phase_high"):  # fmt: skip
        record[key] = rounded(record[key], 4)
    record["r2"] = rounded(record["r2"], 6)
    return record


def phases_found(claims: list[Claim] | list[dict]) -> bool | None:
    """C1's verdict (None when it was not checked): figures name phases only when it held."""
    for c in claims:
        cid, holds = (c["id"], c["holds"]) if isinstance(c, dict) else (c.id, c.holds)
        if cid == "C1":
            return holds
    return None


def check_figures(frame: pd.DataFrame, schedule_kind: str, name: str = "metrics.parquet") -> None:
    """Refuse, before any figure is redrawn, metrics that lack what one of the four figures
    draws (an experiment missing, or only conditions of names the figure does not know): a
    StoreError naming the figure, the experiment and the conditions found."""
    from archrefine.experiments.claims import SCHEDULE_KINDS, TOPK

    exp, cond = phase_source(frame, schedule_kind)
    needs = {
        FIGURES[0]: ("trajectory", ["baseline"]),
        FIGURES[1]: ("topk", [f"k={k}" for k in TOPK]),
        FIGURES[2]: (exp, [cond]),
        FIGURES[3]: ("schedules", list(SCHEDULE_KINDS)),
    }
    for figure, (experiment, known) in needs.items():
        have = sorted(set(frame.condition[frame.experiment == experiment].astype(str)))
        if not set(have) & set(known):
            found = f"only conditions {', '.join(have)}" if have else "no rows"
            want = " or ".join(known) if len(known) < 5 else f"{known[0]} … {known[-1]}"
            raise StoreError(
                f"{name}: {figure} needs the {experiment} experiment's condition {want}, and "
                f"it has {found}; nothing was redrawn"
            )


def draw(out: Path, frame: pd.DataFrame, found: Phases, schedule_kind: str, **kw) -> None:
    """Draw the four figures (see `drawing`, whose options `kw` are), after `check_figures`."""
    check_figures(frame, schedule_kind, str(Path(out) / "metrics.parquet"))
    with drawing(out, frame, found, schedule_kind, **kw):
        pass


@contextmanager
def drawing(
    out: Path,
    frame: pd.DataFrame,
    found: Phases,
    schedule_kind: str,
    *,
    workers: int = 2,
    generator: str = "this run",
    period: int = 4,
    named: bool | None = None,
) -> Iterator[None]:
    """Draw the four figures while the body runs, in parallel forked processes (matplotlib is
    single-threaded; the frames reach them by fork, unpickled), and wait for them on leaving;
    phases are named only when C1 held (`named`, see `phases_found`)."""
    traj = frame[(frame.experiment == "trajectory") & (frame.condition == "baseline")]
    exp, cond = phase_source(frame, schedule_kind)
    phase_run = frame[(frame.experiment == exp) & (frame.condition == cond)]
    jobs = [
        ("trajectory", (traj, out / FIGURES[0]), {"found": found, "named": named}),
        ("topk", (frame[frame.experiment == "topk"], out / FIGURES[1]), {}),
        ("phases", (phase_run, found, out / FIGURES[2]), {"named": named}),
        (
            "schedules",
            (frame[frame.experiment == "schedules"], out / FIGURES[3]),
            {"period": period},
        ),
    ]
    if "comparison" in set(frame.experiment):
        jobs.append(
            (
                "compare",
                (
                    {"paper": frame[frame.experiment == "comparison"], generator: traj},
                    out / COMPARE,
                ),
                {},
            )
        )
    calls = [(partial(_plot, name, **kw), args) for name, args, kw in jobs]
    with forked_pool(workers, calls) if workers > 1 else nullcontext() as pool:
        if pool is None:
            yield
            for fn, args in calls:
                fn(*args)
            return
        futures = [pool.submit(call_held, i) for i in range(len(calls))]
        yield
        for future in futures:
            future.result()


def _plot(name: str, *args, **kw) -> None:
    """Draw one figure with `plots.<name>`, importing matplotlib where it draws: the worker
    processes, not the main one (~30 MB of its peak memory)."""
    from archrefine.experiments import plots

    getattr(plots, name)(*args, **kw)


def check_plan(config: Config) -> None:
    """Every simulation the experiments will run is a valid config: at least two cycles (a rate
    of change, a phase), and each condition's settings on top of `config` (e.g. 4 islands need
    `loop.top_k` ≥ 4). A ConfigError naming the condition before anything is written, not a
    traceback after the simulations or a run directory left unfinished."""
    if config.loop.cycles < MIN_CYCLES:
        raise ConfigError(
            f"loop.cycles: the paper's experiments need at least {MIN_CYCLES} cycles to measure "
            f"a change (got {config.loop.cycles})"
        )
    for experiment, conds in plan(config).items():
        for name, overrides in conds.items():
            try:
                config.with_overrides(overrides)
            except ConfigError as err:
                raise ConfigError(f"{experiment} experiment, condition {name}: {err}") from None


def start(out: Path, config: Config, *, force: bool) -> float:
    check_plan(config)
    meta = {"seed": config.seed, "trials": config.trials}
    open_run(out, force=force, kind="reproduce", meta=meta, fresh=True)
    atomic_write_text(out / "config.toml", config.to_toml())
    return time.time()


def _verdict(holds: bool | None) -> str:
    return "not measured" if holds is None else "yes" if holds else "**no**"


def fmt(value) -> str:
    """A claim's value in one short line: dicts as k=v, lists in brackets, None as a dash."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items() if k != "balance")
    if isinstance(value, list):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if value is None:
        return "–"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


def summary(c: Claim) -> str:
    """The few numbers of a claim's `measured` that decide it (claims.json has all of them)."""
    m = c.measured
    if not isinstance(m, dict):
        return fmt(m)
    try:
        if c.id == "C1":
            shapes = m["shape"]
            failed = [k for k, ok in shapes.items() if not ok]
            return (
                f"{m['count']} boundaries {fmt(m.get('boundaries', []))} "
                f"(90% {fmt(m.get('ci90', []))}); R² gains {fmt(m['r2_gain'])}; "
                f"phase shapes {len(shapes) - len(failed)}/{len(shapes)}"
                + (f" (failed: {', '.join(failed)})" if failed else "")
                + f"; diversity drop in specialization "
                f"{_pct(m['diversity_drop_share_in_specialization'])} "
                f"over {_pct(m['specialization_duration_share'])} of the run"
            )
        if c.id == "C2":
            return (
                f"levels r={fmt(m['levels_r'])}, changes r={fmt(m['changes_r'])}, "
                f"fixed-cycle ρ={fmt(m['fixed_cycle_rho'])}"
            )
        if c.id == "C3":
            return ", ".join(f"{k.removesuffix('_loss')}={_pct(v)}" for k, v in m.items())
        if c.id == "C4":
            return (
                f"kept={fmt(m['kept'])}, validity share={fmt(m['validity_share'])}; "
                f"kept by schedule {fmt(m['kept_by_schedule'])}"
            )
        if c.id == "C6":
            return (
                f"ρ validity={fmt(m['rho_validity'])}, fitness={fmt(m['rho_fitness'])}, "
                f"diversity={fmt(m['rho_diversity'])}; best k={m['best_k']} "
                f"(90% {fmt(m['best_k_ci90'])})"
            )
        if c.id == "C7":
            return (
                f"validity rise {fmt(m['validity_rise'])}, novelty fall "
                f"{fmt(m['novelty_fall'])}, lag {fmt(m['lag'])} (90% {fmt(m['lag_ci90'])})"
            )
    except KeyError:
        pass
    return fmt({k: v for k, v in m.items() if not isinstance(v, (dict, list))} or m)


def claims_markdown(claims: list[Claim], config: Config) -> str:
    return claims_table(
        claims,
        f"Claims check ({config.trials} trials, seed {config.seed}, space "
        f"{config.space.kind}, generator {config.generator.kind})",
    )


def claims_table(claims: list[Claim], title: str) -> str:
    """The claims as a Markdown table; a claim whose experiment was not run says so.

    Confidence: the share of bootstrap resamples of the trials in which the claim holds."""
    rows = [
        f"# {title}",
        "",
        "| id | claim | paper | measured | tolerance | holds | confidence |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in claims:
        conf = getattr(c, "confidence", None)
        cells = (c.id, c.claim, fmt(c.paper), summary(c), c.tolerance, _verdict(c.holds),
                 "–" if conf is None else f"{conf:.2f}")  # fmt: skip
        rows.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
    held = sum(c.holds is True for c in claims)
    measured = sum(c.holds is not None for c in claims)
    missing = len(claims) - measured
    note = f" ({missing} not measured: their experiments were not run)" if missing else ""
    rows += [
        "",
        f"{held} of {measured} claims hold.{note} Confidence: the share of bootstrap resamples "
        "of the trials in which the claim holds (– with one trial); every number measured is in "
        "claims.json.",
    ]
    return "\n".join(rows) + "\n"
