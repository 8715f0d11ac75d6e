"""Where the learned generator's time goes, for issue 14's `calibrate --generator learned`.

    python benchmarks/learned_profile.py   # prints and updates "## learned profile" of RESULTS.md

One simulation as `calibrate` runs each (the learned defaults, 2 trials, 22 cycles, one torch
thread, pre-training not cached), split by CPU seconds into pre-training, sampling, fine-tuning
and the rest; then the operators of one fine-tuning step and of one pre-training probe by
torch's profiler. docs/performance.md ("The learned generator's fit") reads these.
"""

from __future__ import annotations

import functools
import os
import time
from collections import Counter
from datetime import datetime, timezone

from _results import machine, update_results

from archrefine import Config

BASE = {"space.kind": "grounded", "generator.kind": "learned"}


def _timed(phases: Counter, owner, name: str, label: str):
    """Wrap `owner.name` so its CPU seconds add up under `phases[label]`; the original back."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            phases[label] += time.process_time() - start

    setattr(owner, name, wrapper)
    return original


def _ops(run, steps: int, top: int) -> list[tuple[str, float, float]]:
    """(operator, share of self CPU time, ms per call of `run`) by torch's profiler."""
    from torch.profiler import ProfilerActivity, profile

    run()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    return [
        (e.key, e.self_cpu_time_total / total, e.self_cpu_time_total / steps / 1e3) for e in ranked
    ]


def profile_section(top: int = 8) -> str:
    """Where the CPU time of one simulation (the learned defaults, 2 trials, 22 cycles, one
    process, as `calibrate` runs each) goes: pre-training, sampling (`propose`), fine-tuning
    (`refine`) and the rest; then the operators of one fine-tuning step and of one pre-training
    probe (256 sequences written from BOS) by torch's profiler (self CPU time)."""
    import torch

    import archrefine.sim.learned as learned
    from archrefine.core.config import LearnedConfig
    from archrefine.experiments.fitting import simulate_candidates
    from archrefine.sim.transformer import Adam, init_params, one_thread, sample, token_loss

    phases: Counter = Counter()
    wrapped = [
        (learned._Pretraining, "until", "pre-training"),
        (learned.LearnedGenerator, "propose", "sampling (propose)"),
        (learned.LearnedGenerator, "refine", "fine-tuning (refine)"),
    ]
    originals = [_timed(phases, *w) for w in wrapped]
    load = os.getloadavg()[0]
    start = time.process_time()
    try:
        simulate_candidates(Config(trials=2, seed=0).with_overrides(BASE))
    finally:
        for (owner, name, _), original in zip(wrapped, originals):
            setattr(owner, name, original)
    total = time.process_time() - start
    phases["the rest (validity, fitness, novelty, selection)"] = total - sum(phases.values())

    cfg, g = LearnedConfig(), torch.Generator().manual_seed(0)
    one = init_params(cfg, 30, 15, g)
    p = {k: v.expand(2, *v.shape[1:]).clone().requires_grad_() for k, v in one.items()}
    data = torch.randint(30, (2, cfg.batch, 15), generator=g)
    opt, on = Adam(list(p.values()), cfg.lr), torch.ones(2, dtype=torch.bool)

    def step() -> None:
        params = list(p.values())
        loss = token_loss(p, {}, data, cfg.heads)
        opt.step(params, torch.autograd.grad(loss.sum(), params), on)

    probe = torch.zeros(1, 256, 15, dtype=torch.long)
    q = {k: v.detach()[:1] for k, v in p.items()}
    step_ops = one_thread(_ops)(step, 20, top)
    probe_ops = one_thread(_ops)(
        lambda: sample(q, {}, probe, torch.ones_like(probe, dtype=torch.bool), cfg, g), 5, top
    )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## learned profile\n",
        f"{stamp} · {machine()} · load average {load:.1f} → {os.getloadavg()[0]:.1f} · "
        "`python benchmarks/learned_profile.py`: one simulation of the learned defaults "
        "(2 trials, 22 cycles, one torch thread, pre-training not cached), CPU seconds\n",
        "| part | CPU seconds | share |",
        "|---|---|---|",
        *[f"| {k} | {v:.2f} | {v / total:.0%} |" for k, v in phases.items()],
        f"| whole simulation | {total:.2f} | 100% |",
        "",
        f"Operators of one fine-tuning step (batch {cfg.batch}, T = 2; forward, backward, "
        "Adam) and of one pre-training probe (1 × 256 sequences), torch's profiler, self CPU:\n",
        "| fine-tuning step: operator | share | ms per step | probe: operator | share "
        "| ms per probe |",
        "|---|---|---|---|---|---|",
        *[
            f"| `{a}` | {x:.0%} | {ms:.2f} | `{b}` | {y:.0%} | {ms2:.2f} |"
            for (a, x, ms), (b, y, ms2) in zip(step_ops, probe_ops)
        ],
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    section = profile_section()
    print(section)
    update_results("learned profile", section)


if __name__ == "__main__":
    main()
