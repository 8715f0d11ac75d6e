"""Speed of the learned generator: one cycle (sample 50, check validity, select, fine-tune) and a
whole 22-cycle run, for 1 trial and for 10 trials batched in one model stack.

    python benchmarks/learned.py      # prints the figures and updates benchmarks/RESULTS.md

Targets from issue 4: one cycle ≤ 1 s on CPU; a 22-cycle, 10-trial run ≤ 3 minutes.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone

from _results import machine, update_results

from archrefine import Config, simulate

BASE = {"space.kind": "grounded", "generator.kind": "learned"}


def seconds(trials: int, cycles: int) -> float:
    cfg = Config(trials=trials, seed=0).with_overrides({**BASE, "loop.cycles": cycles})
    simulate(cfg.with_overrides({"loop.cycles": 1}))  # pre-training is cached per process
    start = time.perf_counter()
    simulate(cfg)
    return time.perf_counter() - start


def main() -> None:
    rows = []
    for trials in (1, 10):
        one = seconds(trials, 2) / 2
        rows.append(
            (
                f"one cycle, {trials} trial{'s' * (trials > 1)}",
                f"{one:.2f} s",
                f"{one / trials:.2f} s per trial-cycle",
            )
        )
    full = seconds(10, 22)
    rows.append(("22 cycles, 10 trials (after pre-training)", f"{full:.0f} s", "target ≤ 180 s"))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## learned\n",
        f"{stamp} · {machine()} · load average {os.getloadavg()[0]:.1f} at the end · "
        "`python benchmarks/learned.py` (defaults: 20 fine-tuning steps of batch 32 per cycle)\n",
        "| measure | value | note |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
    ]
    section = "\n".join(lines) + "\n"
    print(section)
    update_results("learned", section)


if __name__ == "__main__":
    main()
