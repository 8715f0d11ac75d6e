"""The real loop: an LLM (or the learned model) writes PyTorch code, the sandbox runs it.
Layer: may import experiments, sim, code, sandbox, space and core; only cli imports it.

>>> from archrefine.real import RealConfig, run
>>> frame = run(RealConfig(), Path("runs/loop-demo"))  # doctest: +SKIP

`run` writes everything `archrefine loop` does (docs/real-loop.md): `candidates.sqlite`,
`metrics.parquet` (the simulator's columns), `trajectory.png`, `phases.json`, `claims.md`,
`claims.json`, and one generator state per cycle under `generator/`, plus `prompt.txt` (the
template the run started with: a resume reads only that copy) and, in `run.json`, the isolation
used and a digest `--resume` checks (`real/trust.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from archrefine.core.store import (
    StoreError,
    atomic_write_text,
    check_out,
    close_run,
    open_run,
    read_metrics,
    read_run,
    refuse_live,
    resume_run,
)
from archrefine.real.config import RealConfig
from archrefine.real.loop import Event, completed_cycles, run_loop
from archrefine.real.text import GeneratorUnavailable, TextGenerator

__all__ = [
    "Event",
    "GeneratorUnavailable",
    "RealConfig",
    "completed_cycles",
    "finished",
    "make_generator",
    "run",
    "start",
]


def make_generator(config: RealConfig) -> TextGenerator:
    """The backend `config.generator.kind` names (heavy imports only for the one asked for)."""
    g = config.generator
    if g.kind == "hf":
        from archrefine.real.hf import HFGenerator, LoraSettings

        lora = g.lora.model_dump()
        lora["target_modules"] = tuple(lora["target_modules"])
        return HFGenerator(g.model, lora=LoraSettings(**lora), device=g.device, seed=config.seed)
    if g.kind == "openai":
        from archrefine.real.openai_api import OpenAIGenerator

        return OpenAIGenerator(
            g.model,
            base_url=g.base_url or None,
            api=g.api,
            timeout_s=g.timeout_s,
            max_retries=g.max_retries,
            concurrency=g.concurrency,
        )
    from archrefine.real.text import LearnedTextGenerator

    return LearnedTextGenerator(g.learned, seed=config.seed)


def start(
    out: Path,
    config: RealConfig,
    *,
    force: bool = False,
    resume: bool = False,
    trust_config: bool = False,
    weaker_isolation: bool = False,
) -> Path:
    """Open `out` for a new run, or (with `resume`) check it holds a run archrefine wrote for
    this user (`trust.verify`: config digest, isolation not weaker) and reopen it."""
    from archrefine.real import trust
    from archrefine.real.prompts import TEMPLATE_FILE, template_text
    from archrefine.sandbox.sandbox import isolation_level

    out = Path(out)
    level = isolation_level(config.evaluate.isolation)
    if resume:
        saved = out / "config.toml"
        if not saved.exists():
            raise StoreError(f"{out}: no loop to resume (no config.toml)")
        if trust_config and not (out / TEMPLATE_FILE).exists():  # a run from before the copy
            atomic_write_text(
                out / TEMPLATE_FILE,
                template_text(config.prompt.template, references=config.prompt.references),
            )
        refuse_live(out, read_run(out))  # a checked record, whose process is gone, first
        trust.verify(out, level, trust_config=trust_config, weaker_isolation=weaker_isolation)
        resume_run(out, read_run(out))  # records this process and the time
        return out
    # read (and checked) before anything is written
    text = template_text(config.prompt.template, references=config.prompt.references)
    from archrefine.sandbox.confine import seccomp_problem

    meta = {
        "seed": config.seed,
        "isolation": level,
        "syscall_filter": seccomp_problem() or "seccomp",
    }
    open_run(out, force=force, kind="loop", meta=meta, fresh=True)
    atomic_write_text(out / "config.toml", config.to_toml())
    atomic_write_text(out / TEMPLATE_FILE, text)
    trust.sign(out, level)
    return out


def finished(out: Path, config: RealConfig) -> bool:
    """Whether `out` holds this loop complete: run.json says so and every cycle is recorded."""
    from archrefine.real.trust import check_files

    if not (Path(out) / "run.json").exists():
        return False
    check_files(Path(out))  # a state file linked elsewhere, a FIFO or a device: refused
    info = read_run(out)
    return info.get("status") == "complete" and completed_cycles(out) >= config.loop.cycles


def run(
    config: RealConfig,
    out: Path,
    *,
    generator: TextGenerator | None = None,
    on_event: Callable[[Event], None] | None = None,
    force: bool = False,
    resume: bool = False,
    trust_config: bool = False,
    weaker_isolation: bool = False,
) -> pd.DataFrame:
    """Run (or resume) a loop in `out` and write its report; return the per-cycle metrics.
    `trust_config` and `weaker_isolation` are the `--resume` overrides of `trust.verify`."""
    from archrefine.real.report import write_report

    if resume and finished(Path(out), config):
        return read_metrics(out)  # nothing to do: every output stays as it is
    started = time.time()
    gen = generator
    if not resume:  # a generator that cannot be built leaves --out as it was (nothing to clear)
        check_out(Path(out), force=force)  # a refused --out is said before a slow model load
        gen = gen or make_generator(config)
    try:  # a resume builds it only after trust.verify: its config.toml may not be the user's
        start(out, config, force=force, resume=resume, trust_config=trust_config,
              weaker_isolation=weaker_isolation)  # fmt: skip
        gen = gen or make_generator(config)
    except BaseException:
        if gen is not None and generator is None:
            gen.close()
        raise
    try:
        frame = run_loop(config, out, gen, on_event=on_event)
    finally:
        gen.close()
    files = write_report(out, config, frame)
    close_run(out, files=files, started=started)
    return frame
