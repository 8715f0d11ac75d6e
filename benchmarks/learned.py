"""Speed of the learned generator: one cycle (sample 50, check validity, select, fine-tune) and a
whole 22-cycle run, for 1 trial and for 10 trials batched in one model stack.

    python benchmarks/learned.py      # prints the figures and updates benchmarks/RESULTS.md
    python benchmarks/learned.py --calibrate [--max-nfev 3]   # only "## learned calibrate"

Targets from issue 4: one cycle ≤ 1 s on CPU; a 22-cycle, 10-trial run ≤ 3 minutes. Issue 14:
`archrefine calibrate --generator learned` ≥ 3x faster: the same fit (Khalid et al.'s trajectory,
2 trials, the CLI's budget) with one worker (every simulation in turn, as before) and with one
per core (a Jacobian's columns and the two starts at once); the fitted parameters must agree.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import datetime, timezone

from _results import machine, update_results

from archrefine import Config, simulate
from archrefine.experiments.calibrate import KHALID, calibrate, load_trajectory
from archrefine.experiments.evaluations import default_workers

BASE = {"space.kind": "grounded", "generator.kind": "learned"}
NOTE = (
    "On a machine busy with other work the worker processes also take a larger share of the "
    "shared cores than one process does, so a ratio measured under load overstates what an "
    "idle machine gives; there the parallel part is bounded by the core count."
)


def seconds(trials: int, cycles: int) -> float:
    cfg = Config(trials=trials, seed=0).with_overrides({**BASE, "loop.cycles": cycles})
    simulate(cfg.with_overrides({"loop.cycles": 1}))  # pre-training is cached per process
    start = time.perf_counter()
    simulate(cfg)
    return time.perf_counter() - start


def calibrate_section(max_nfev: int | None) -> str:
    """Seconds for the whole learned fit with 1 worker and with every core, same process."""
    observed, rows, fits = load_trajectory(KHALID), [], []
    for workers in sorted({1, default_workers()}):
        start = time.perf_counter()
        cal = calibrate(observed, generator="learned", workers=workers, max_nfev=max_nfev)
        rows.append((workers, time.perf_counter() - start, cal.info["evaluations"]))
        fits.append(cal.params)
        print(f"workers={workers}: {rows[-1][1]:.0f} s, {rows[-1][2]} simulations", flush=True)
    same = all(f == fits[0] for f in fits)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    budget = "the CLI's budget" if max_nfev is None else f"max_nfev={max_nfev}"
    lines = [
        "## learned calibrate\n",
        f"{stamp} · {machine()} · load average {os.getloadavg()[0]:.1f} at the end (other "
        "work on the machine slows both runs) · `python benchmarks/learned.py --calibrate"
        + ("" if max_nfev is None else f" --max-nfev {max_nfev}")
        + f'`: `calibrate(khalid2026.csv, generator="learned")`, 2 trials, {budget}\n',
        "| workers | seconds | simulations | speed-up |",
        "|---|---|---|---|",
        *[f"| {w} | {t:.0f} | {n} | {rows[0][1] / t:.2f}× |" for w, t, n in rows],
        "",
        f"Fitted parameters identical across worker counts: {'yes' if same else '**no**'}. " + NOTE,
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibrate", action="store_true", help="only the calibrate section")
    parser.add_argument("--max-nfev", type=int, default=None, help="calibrate's budget per start")
    args = parser.parse_args()
    if args.calibrate:
        section = calibrate_section(args.max_nfev)
        print(section)
        update_results("learned calibrate", section)
        return
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
