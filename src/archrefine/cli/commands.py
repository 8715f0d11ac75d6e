"""The simulator's commands: reproduce, robustness, run (and --resume), calibrate.

A thin layer that parses, calls the library and prints; what every command module shares (the
app, options, one-line errors, progress) is in `common.py`; plot and config in `show.py`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from archrefine.cli.common import (  # noqa: F401 - re-exported: app and main lived here
    ForceOpt,
    OutOpt,
    SetOpt,
    TrackOpt,
    app,
    console,
    main,
    one_line_errors,
    out_console,
    progress_bar,
    tracker,
    write_report,
)
from archrefine.core.config import Config, ConfigError, load_config


@app.command()
@one_line_errors
def reproduce(
    trials: Annotated[int | None, typer.Option(help="Trials per condition (default 100).")] = None,
    seed: Annotated[int | None, typer.Option(help="Root random seed (default 0).")] = None,
    out: OutOpt = None,
    config: Annotated[Path | None, typer.Option(help="Base config TOML.")] = None,
    space: Annotated[
        str | None, typer.Option(help="Sets space.kind: abstract, grounded or nasbench-graph.")
    ] = None,
    generator: Annotated[
        str | None, typer.Option(help="Sets generator.kind: paper or learned.")
    ] = None,
    set_: SetOpt = None,
    workers: Annotated[int | None, typer.Option(help="Processes (default: one per core).")] = None,
    force: ForceOpt = False,
    track: TrackOpt = None,
) -> None:
    """Run the paper's four experiments; write figures, metrics and the claims table."""
    from archrefine.core.store import default_dir
    from archrefine.experiments import reproduce as rep
    from archrefine.sim.budget import check_memory

    overrides = list(set_ or [])
    for key, value in (
        ("trials", trials),
        ("seed", seed),
        ("space.kind", space),
        ("generator.kind", generator),
    ):
        if value is not None:
            overrides.append(f"{key}={value}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers: {workers} is not at least 1")
    cfg = load_config(config, overrides)
    rep.check_plan(cfg)
    check_memory(cfg)
    tracking = tracker(cfg, track)
    out = out or default_dir("reproduce")
    started = rep.start(out, cfg, force=force)
    with progress_bar() as progress:
        task = progress.add_task("simulating conditions", total=rep.conditions(cfg))
        result = rep.reproduce(cfg, workers=workers, on_done=lambda: progress.advance(task))
    rep.write(out, cfg, result, started=started)
    write_report(out)
    _print_claims(result.claims)
    console.print(
        f"wrote {out}/ in {time.time() - started:.1f} s "
        f"({sum(c.holds for c in result.claims)}/{len(result.claims)} claims hold)"
    )
    tracking.log(out)


@app.command()
@one_line_errors
def robustness(
    config: Annotated[Path | None, typer.Argument(help="Base config TOML.")] = None,
    seeds: Annotated[int | None, typer.Option(help="Seeds from --seed (default 10).")] = None,
    trials: Annotated[
        int | None, typer.Option(help="Trials per run (default: the config's, 100).")
    ] = None,
    perturb: Annotated[
        float | None,
        typer.Option(help="Move each free parameter by ±FRAC; 0: seeds only (default 0.15)."),
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="Only this free parameter (repeatable).")
    ] = None,
    trajectories: Annotated[
        int | None, typer.Option(help="Morris trajectories (default 4).")
    ] = None,
    morris_trials: Annotated[
        int | None, typer.Option(help="Trials per Morris point (default: min(trials, 30)).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Root seed of the seeds (default 0).")] = None,
    set_: SetOpt = None,
    workers: Annotated[int | None, typer.Option(help="Processes (default: one per core).")] = None,
    out: OutOpt = None,
    force: ForceOpt = False,
    resume: Annotated[
        Path | None, typer.Option(help="Finish the study in this directory: finished jobs kept.")
    ] = None,
) -> None:
    """Do the claims hold across seeds and near the parameters? Verdicts, Morris sensitivity."""
    from archrefine.core.store import default_dir
    from archrefine.experiments import robustness as rb

    given = {"CONFIG": config, "--seeds": seeds, "--trials": trials, "--perturb": perturb,
             "--param": param, "--trajectories": trajectories, "--morris-trials": morris_trials,
             "--seed": seed, "--set": set_, "--out": out, "--force": force or None}  # fmt: skip
    if resume is not None:
        extra = [k for k, v in given.items() if v is not None]
        if extra:
            raise ConfigError(f"--resume uses the study's own settings: drop {', '.join(extra)}")
        from archrefine.core.store import expect_kind

        expect_kind(resume, "robustness")  # a run or sweep directory says what it holds
        base, settings = rb.load_study(resume)
        out = resume
    else:
        overrides = list(set_ or []) + ([f"seed={seed}"] if seed is not None else [])
        base = load_config(config, overrides)
        settings = rb.Settings(
            seeds=10 if seeds is None else seeds,
            trials=base.trials if trials is None else trials,
            perturb=0.15 if perturb is None else perturb,
            params=tuple(param) if param else None,
            trajectories=4 if trajectories is None else trajectories,
            morris_trials=morris_trials,
        ).validate()  # the options' own one-line errors first, then the memory they need
        from archrefine.experiments.reproduce import check_plan
        from archrefine.sim.budget import check_memory

        check_plan(base)
        check_memory(base.with_overrides({"trials": settings.trials}))
        out = out or default_dir("robustness")
    counts = {"ran": 0, "skipped": 0}
    began = time.time()
    with progress_bar() as progress:
        task = progress.add_task("robustness jobs", total=None)

        def advance(job, what: str) -> None:
            counts[what] += 1
            progress.advance(task)

        summary = rb.run_robustness(
            base, settings, out, workers=workers, force=force, resume=resume is not None,
            on_job=advance, on_plan=lambda n: progress.update(task, total=n),
        )  # fmt: skip
    table = Table(title="Claims across seeds and the parameter neighbourhood")
    for col in ("id", "held/seeds", "share seeds", "share neighbourhood", "robust"):
        table.add_column(col)
    for c in summary["claims"]:
        share_s, share_n = c["share_seeds"], c["share_neighbourhood"]
        table.add_row(
            c["id"], f"{c['held']}/{c['seeds']}",
            "–" if share_s is None else f"{share_s:.0%}",
            "–" if share_n is None else f"{share_n:.0%}",
            {True: "[green]yes[/]", False: "[red]no[/]", None: "–"}[c["robust"]],
        )  # fmt: skip
    out_console.print(table)
    console.print(
        f"wrote {out}/ in {time.time() - began:.1f} s "
        f"({counts['ran']} jobs ran, {counts['skipped']} already finished)",
        soft_wrap=True,
    )


def _print_claims(claims) -> None:
    from archrefine.experiments.reproduce import fmt, summary

    table = Table(title="Paper claims vs. this simulation")
    for col in ("id", "claim", "paper", "measured", "holds", "confidence"):
        table.add_column(col, overflow="fold")
    for c in claims:
        conf = getattr(c, "confidence", None)
        table.add_row(
            c.id,
            c.claim,
            fmt(c.paper),
            summary(c),
            "[green]yes[/]" if c.holds else "[red]no[/]",
            "–" if conf is None else f"{conf:.2f}",
        )
    out_console.print(table)


@app.command()
@one_line_errors
def run(
    config: Annotated[
        Path | None, typer.Argument(help="Config TOML (defaults if omitted).")
    ] = None,  # noqa: E501
    set_: SetOpt = None,
    trials: Annotated[int | None, typer.Option(help="Sets trials (default 100).")] = None,
    seed: Annotated[int | None, typer.Option(help="Sets seed, the root seed (default 0).")] = None,
    out: OutOpt = None,
    force: ForceOpt = False,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the interrupted run in this directory (its own config)."),
    ] = None,
    track: TrackOpt = None,
    no_figures: Annotated[
        bool,
        typer.Option(
            "--no-figures",
            help="Skip trajectory.png and report.html (later: archrefine plot/report DIR).",
        ),
    ] = False,
) -> None:
    """Run one configuration; write config.toml, metrics.parquet and a trajectory figure.

    The loop's state is checkpointed every checkpoint.every_s seconds and after the last cycle
    (and on Ctrl-C), so `--resume DIR` finishes a killed run with exactly the results an
    uninterrupted one would have."""
    given = [f"{k}={v}" for k, v in (("trials", trials), ("seed", seed)) if v is not None]
    if resume is not None:
        if given:
            raise ConfigError("--resume uses the run's own config.toml: drop --trials and --seed")
        cfg, out, done = _reopen(resume, config=config, set_=set_, out=out, force=force)
        if done is None:
            return
        tracking = tracker(cfg, track)
        started = time.time()
    else:
        from archrefine.core.store import atomic_write_text, default_dir, open_run

        cfg = load_config(config, [*(set_ or []), *given])
        from archrefine.sim.budget import check_memory

        check_memory(cfg)  # before the directory is made
        tracking = tracker(cfg, track)
        out = out or default_dir("run")
        meta = {"seed": cfg.seed, "trials": cfg.trials}
        open_run(out, force=force, kind="run", meta=meta, fresh=True)  # --force: afresh
        started, done = time.time(), 0
        atomic_write_text(out / "config.toml", cfg.to_toml())
    from archrefine.cli.beside import Beside  # draws the figure and report beside the loop
    from archrefine.core.store import close_run, closed_info, write_parquet
    from archrefine.sim.loop import simulate

    with Beside(start=not no_figures) as beside:
        with progress_bar() as progress:
            task = progress.add_task("cycles", total=cfg.loop.cycles, completed=done)
            result = simulate(
                cfg,
                on_cycle=lambda c: progress.update(task, completed=c),
                checkpoint=out / CHECKPOINT,
                resume=resume is not None,
            )
        files = ["config.toml", "metrics.parquet", CHECKPOINT]
        if no_figures:
            write_parquet(out / "metrics.parquet", result.columns)  # no pandas needed here
            close_run(out, files=files, started=started)
        else:
            beside.draw(out, result.columns)
            write_parquet(out / "metrics.parquet", result.columns)
            info = closed_info(out, files=[*files, "trajectory.png"], started=started)
            beside.prepare(info)  # the report is built while the figure is drawn
            beside.figure(result)
            close_run(out, info=info)
            beside.report()
    last = result.final()
    out_console.print("final cycle: " + ", ".join(f"{k} {v:.3f}" for k, v in last.items()))
    console.print(f"wrote {out}/")
    tracking.log(out)


CHECKPOINT = "checkpoint.bin"


def _reopen(directory: Path, *, config, set_, out, force) -> tuple[Config, Path, int | None]:
    """Check that `directory` holds an interrupted `archrefine run`; return its config, the
    directory and the cycles its checkpoint completed (None, said aloud, if it had finished)."""
    from archrefine.core.store import StoreError, expect_kind, resume_run
    from archrefine.sim.checkpoint import Checkpoint

    if config is not None or set_:
        raise ConfigError("--resume uses the run's own config.toml: drop CONFIG and --set")
    if out is not None or force:
        raise ConfigError("--resume writes into the run's own directory: drop --out and --force")
    info = expect_kind(directory, "run")  # a loop or sweep directory says what it holds
    if not (directory / "config.toml").is_file():
        raise StoreError(f"{directory}: no run to resume (no config.toml)")
    cfg = load_config(directory / "config.toml")
    if info is not None and info.get("status") == "complete":
        done = f"{directory}/ is already complete ({cfg.loop.cycles} cycles): nothing to do"
        console.print(done, soft_wrap=True)
        return cfg, directory, None
    for tmp in directory.glob(f".{CHECKPOINT}.*.tmp"):  # a write the kill cut short
        tmp.unlink()
    path = directory / CHECKPOINT
    done = Checkpoint(path, cfg).completed() if path.exists() else 0  # and of this config
    if info is not None:
        resume_run(directory, info)  # refused while its process lives; records this one
    console.print(f"resuming {directory}/ after cycle {done} of {cfg.loop.cycles}", soft_wrap=True)
    return cfg, directory, done


@app.command()
@one_line_errors
def calibrate(
    trajectory: Annotated[Path, typer.Argument(help="Observed per-cycle trajectory CSV.")],
    generator: Annotated[
        str,
        typer.Option(
            help="Generator to fit: paper, learned, drift (paper + drift) or drift-set (drift, the "
            "bonus growing with the fine-tuning set)."
        ),
    ] = "paper",
    out: OutOpt = None,
    trials: Annotated[
        int | None, typer.Option(help="Trials per evaluation (default: paper 30, learned 2).")
    ] = None,
    seed: Annotated[int, typer.Option(help="The one seed every evaluation uses.")] = 0,
    columns: Annotated[
        str | None, typer.Option(help="Comma-separated observed columns to fit (default: all).")
    ] = None,
    loo: Annotated[
        bool, typer.Option("--loo", help="Also refit leaving each observed cycle out.")
    ] = False,
    run_means: Annotated[
        bool,
        typer.Option(
            "--run-means",
            help="Also fit the CSV's run means (its row with cycle 'all': a column's mean over "
            "every cycle, e.g. a published mean valid rate).",
        ),
    ] = False,
    params: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated parameters to fit, each KEY (its default bounds) or KEY=LO:HI "
            "(default: the generator's own set).",
        ),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Fit a generator's parameters to an observed trajectory; write params, residuals, overlay."""
    from archrefine.core.store import close_run, default_dir, open_run
    from archrefine.experiments import calibrate as cal
    from archrefine.experiments import calibrate_report as cal_report

    observed, means = cal.read_trajectory(trajectory)
    # --seed and --trials checked as a config checks them, before the run directory is made
    Config().with_overrides({"seed": seed} | ({"trials": trials} if trials is not None else {}))
    free = cal.parse_params(params, generator) if params else cal.free_params(generator)
    cols = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    cal.check_columns(cols, list(observed.columns), str(trajectory))  # before anything is written
    if run_means and not means:
        raise cal.CalibrationError(f"--run-means: {trajectory} has no row with cycle 'all'")
    fitted = cols or [c for c in cal.KNOWN_COLUMNS if c in observed.columns]
    used = {c: v for c, v in means.items() if c in fitted} if run_means else {}
    if run_means and not used:
        raise cal.CalibrationError(
            f"--run-means: {trajectory}'s run means ({', '.join(means)}) are of columns not fitted"
        )
    means = used
    common = {"generator": generator, "trials": trials, "seed": seed, "columns": cols}
    common |= {"params": free, "run_means": means}
    common |= {"cycles": int(observed["cycle"].max())} if means else {}  # the means' cycles
    from archrefine.experiments.loo import check_folds, check_values

    fit = dict(generator=generator, columns=cols, params=free, run_means=means)
    check_values(observed, name=str(trajectory), **fit)  # before the run directory is made
    if loo:  # every refit needs fewer free parameters than observed values: check before fitting
        check_folds(observed, **fit)
    out = out or default_dir("calibrate")
    meta = {"trajectory": str(trajectory), "generator": generator, "trials": trials, "seed": seed}
    meta |= {"columns": cols, "loo": loo, "params": params, "run_means": means or None}
    open_run(out, force=force, kind="calibrate", meta=meta, fresh=True)
    started = time.time()
    with progress_bar() as progress:  # the fit's length is not known ahead: a count, no total
        task = progress.add_task("fitting: simulations run", total=None)
        result = cal.calibrate(
            observed, on_evaluation=lambda n: progress.update(task, completed=n), **common
        )
        if loo:  # docs/rise-and-fall.md: one refit per observed cycle
            from archrefine.experiments.loo import with_loo

            with_loo(result, observed, **common)
    files = cal_report.write_calibration(out, result)
    close_run(out, files=files, started=started)
    out_console.print(cal_report.summary(result))
    console.print(f"wrote {out}/ in {time.time() - started:.1f} s")
