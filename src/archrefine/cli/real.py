"""Commands of the real loop: `loop`, `export`, `serve`, `tiny-model` (registered on `cli.app`)."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.table import Table

from archrefine.cli.common import (
    ForceOpt,
    OutOpt,
    SetOpt,
    TrackOpt,
    app,
    console,
    need_real_extra,
    one_line_errors,
    out_console,
    tracker,
    write_report,
)
from archrefine.core.config import ConfigError, load_config


@app.command()
@one_line_errors
def loop(
    config: Annotated[
        Path | None, typer.Argument(help="Loop config TOML (defaults if omitted).")
    ] = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    force: ForceOpt = False,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the stopped loop in this directory (its own config)."),
    ] = None,
    trust_config: Annotated[
        bool,
        typer.Option(help="--resume a run whose config.toml this user's key did not sign."),
    ] = False,
    weaker_isolation: Annotated[
        bool,
        typer.Option(help="--resume with weaker sandbox isolation than the run started with."),
    ] = False,
    track: TrackOpt = None,
) -> None:
    """Run the real loop: generate code, evaluate it in the sandbox, select, refine, repeat."""
    need_real_extra()
    from archrefine import real
    from archrefine.core.store import default_dir, expect_kind
    from archrefine.real.config import RealConfig
    from archrefine.real.report import summary

    if (trust_config or weaker_isolation) and resume is None:
        raise ConfigError("--trust-config and --weaker-isolation apply only with --resume")
    if resume is not None:
        if config is not None or set_:
            raise ConfigError("--resume uses the run's own config.toml: drop CONFIG and --set")
        from archrefine.real.trust import check_files

        if not resume.is_dir():  # the directory itself, not a file in it, is what is missing
            what = "a file, not a loop directory" if resume.exists() else "no such loop directory"
            raise ConfigError(f"--resume {resume}: {what}")
        check_files(resume)  # before reading any of it: no FIFO, device or link to elsewhere
        info = expect_kind(resume, "loop")  # a simulator run or sweep says what it holds
        if info is None and not (resume / "config.toml").exists():
            raise ConfigError(
                f"--resume {resume}: holds no loop run (no run.json, no config.toml); start one "
                "with archrefine loop --out DIR"
            )
        cfg = load_config(resume / "config.toml", model=RealConfig)
        out, done = resume, real.completed_cycles(resume)
        if info is not None and real.finished(resume, cfg):
            console.print(f"{out}/ is already complete ({done} cycles): nothing to do")
            return  # nothing written: its outputs stay as they are
        console.print(f"resuming {out}/ after cycle {done} of {cfg.loop.cycles}")
    else:
        cfg = load_config(config, list(set_ or []), model=RealConfig)
        out = out or default_dir("loop")
    tracking = tracker(cfg, track)
    display = _Display(cfg)
    live = Live(display.render(), console=console, refresh_per_second=4) if display.tty else None

    def on_event(event) -> None:
        display.update(event)
        if live is not None:
            live.update(display.render())

    with live or contextlib.nullcontext():
        frame = real.run(
            cfg, out, force=force, resume=resume is not None, on_event=on_event,
            trust_config=trust_config, weaker_isolation=weaker_isolation,
        )  # fmt: skip
    write_report(out)
    out_console.print(summary(frame), soft_wrap=True)
    console.print(f"wrote {out}/ (candidates.sqlite, metrics.parquet, trajectory.png, claims.md)",
                  soft_wrap=True)  # fmt: skip
    tracking.log(out)


class _Display:
    """The live view: cycle, candidates done, valid rate, best and mean fitness, ETA."""

    def __init__(self, cfg) -> None:
        self.cycles, self.n = cfg.loop.cycles, cfg.loop.population
        self.cycle, self.stage, self.done, self.total = 0, "starting", 0, 0
        self.last: dict = {}
        self.cycle_seconds: list[float] = []
        self.tty = console.is_terminal

    def update(self, e) -> None:
        self.cycle, self.stage, self.done, self.total = e.cycle, e.stage, e.done, e.total
        if e.stage == "cycle":
            self.last = e.row
            self.cycle_seconds.append(e.row.get("seconds", math.nan))
        if not self.tty and e.stage == "cycle":  # a log line per cycle instead of the live view
            console.print(self._line(), soft_wrap=True)

    def _eta(self) -> str:
        if not self.cycle_seconds:
            return "–"
        per = sum(self.cycle_seconds) / len(self.cycle_seconds)
        left = (self.cycles - len(self.cycle_seconds)) * per
        return f"{left / 60:.1f} min" if left >= 60 else f"{left:.0f} s"

    def _line(self) -> str:
        r = self.last
        return (
            f"cycle {r.get('cycle', 0)}/{self.cycles}: valid {_f(r.get('validity'))}, "
            f"fitness mean {_f(r.get('fitness'))} best {_f(r.get('best_fitness'))}, "
            f"novelty {_f(r.get('novelty'))}, ETA {self._eta()}"
        )

    def render(self) -> Table:
        t = Table.grid(padding=(0, 2))
        r = self.last
        t.add_row("cycle", f"{self.cycle}/{self.cycles} ({self.stage} {self.done}/{self.total})")
        for key, label in (("validity", "valid rate"), ("fitness", "mean fitness"),
                           ("best_fitness", "best fitness"), ("novelty", "novelty")):  # fmt: skip
            t.add_row(label, _f(r.get(key)))
        t.add_row("ETA", self._eta())
        return t


def _f(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.3f}"


@app.command()
@one_line_errors
def export(
    directory: Annotated[Path, typer.Argument(help="A loop directory (with candidates.sqlite).")],
    format: Annotated[str, typer.Option("--format", "-f", help="parquet or jsonl.")] = "parquet",
    out: OutOpt = None,
) -> None:
    """Export a loop's candidates: Parquet tables, or JSONL prompt–completion pairs to fine-tune."""
    from archrefine.core.store import StoreError
    from archrefine.real.candidates import CandidateStore

    if format not in ("parquet", "jsonl"):
        raise ConfigError(f"--format: {format!r} is not one of parquet, jsonl")
    db = directory / "candidates.sqlite"
    if not db.exists():
        raise StoreError(f"{directory}: no candidates.sqlite (not a loop directory)")
    with CandidateStore(db) as store:
        path = store.export(out or directory, fmt=format)
        total = len(store)
    if format == "jsonl":  # count what the file holds, not what the store holds
        with path.open(encoding="utf-8") as lines:
            pairs = sum(1 for line in lines if line.strip())
        written = f"{pairs} prompt–completion pairs from the {total} candidates in the store"
    else:
        import pyarrow.parquet as pq

        written = f"{pq.read_metadata(path).num_rows} candidates"
    console.print(f"wrote {path} ({written})", soft_wrap=True)


@app.command()
@one_line_errors
def serve(
    generator: Annotated[str, typer.Option(help="learned or hf.")] = "learned",
    model: Annotated[str, typer.Option(help="hf: local model directory.")] = "",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 8000,
    seed: Annotated[int, typer.Option(help="Seed of the served generator.")] = 0,
) -> None:
    """Serve a local generator over the OpenAI API (chat and completions) on loopback."""
    need_real_extra()
    from archrefine.real import make_generator
    from archrefine.real.config import RealConfig
    from archrefine.real.serve import GeneratorServer, check_address

    if generator not in ("learned", "hf"):
        raise ConfigError(f"--generator: {generator!r} is not one of learned, hf")
    check_address(host, port)  # a busy port fails before the model is built
    cfg = RealConfig().with_overrides(  # a bad --seed is one line naming it, as in --set
        {"seed": seed, "generator.kind": generator, "generator.model": model}
    )
    server = GeneratorServer(make_generator(cfg), model_name=model or generator, host=host,
                             port=port)  # fmt: skip
    console.print(f"serving {generator} at {server.url} (Ctrl-C stops)")
    server.serve_forever()


@app.command("tiny-model")
@one_line_errors
def tiny_model(
    directory: Annotated[Path, typer.Argument(help="Where to write the model.")],
    seed: Annotated[int, typer.Option(help="Initialisation, tokenizer and data seed.")] = 0,
    steps: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Training steps (default 300, minutes on 2 CPU cores; "
            "0: random weights, which write gibberish).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Write into a directory that holds other files.")
    ] = False,
) -> None:
    """Write a tiny GPT-2 trained here on KNOWN-like code, to try the hf generator (tiny.toml)."""
    need_real_extra()
    from rich.progress import Progress

    from archrefine.real.tiny import TINY_STEPS, build_tiny_model

    steps = TINY_STEPS if steps is None else steps
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("training the tiny model", total=steps or 1)
        path = build_tiny_model(
            directory, seed=seed, steps=steps, force=force,
            on_step=lambda s, n, loss: progress.update(
                bar, completed=s, description=f"training the tiny model (loss {loss:.2f})"),
        )  # fmt: skip
    trained = f"trained {steps} steps" if steps else "random weights"
    console.print(f'wrote {path}/ ({trained}; use generator.model = "{path}")', soft_wrap=True)
