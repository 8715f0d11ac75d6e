"""Throughput of first-epoch fitness: networks trained and scored per second.

    python benchmarks/training.py             # updates "## training" in RESULTS.md
    python benchmarks/training.py --no-write --random 4 --max-train 300

Trains the KNOWN architectures and a sample of uniformly random valid sequences (one epoch on
the 1,347 training digits at 3x32x32 unless --max-train says otherwise) with 1 worker (in this
process) and with one per core (`workers=0`: costly networks one per task, small ones packed
several to a task), caching off, after `start()` has started the workers and loaded the data
(timed separately as start-up); networks/s per core is the rate over the workers used.
Replaces only its own section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time

import numpy as np
from _results import RESULTS, machine, update_results

from archrefine.sandbox.training import FirstEpochFitness
from archrefine.space import KNOWN_ARRAY, LENGTH, VOCAB, is_valid


def random_valid(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, len(VOCAB), (200_000, LENGTH))
    return pool[is_valid(pool)][:n]


def measure(seqs: np.ndarray, workers: int, max_train: int | None) -> tuple[int, float, float]:
    """(workers used, start-up seconds, networks per second) for one worker count."""
    with FirstEpochFitness(workers=workers, max_train=max_train, cache=False) as fit:
        start = time.perf_counter()
        fit.start()
        startup = time.perf_counter() - start
        start = time.perf_counter()
        acc = fit(seqs)
        rate = len(seqs) / (time.perf_counter() - start)
    assert not np.isnan(acc).any()
    return fit.workers, startup, rate


def section(rows: list[tuple[str, int, float, float]], args: argparse.Namespace) -> str:
    """The RESULTS.md section."""
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    data = "all 1,347" if args.max_train is None else f"{args.max_train}"
    lines = [
        "## training",
        "",
        f"`python benchmarks/training.py` on {date}; {machine()}; load average "
        f"{os.getloadavg()[0]:.1f} when it finished (figures drop under load).",
        "",
        f"`FirstEpochFitness`: one epoch of Adam (batch 32) on {data} training digits at "
        "3x32x32, then accuracy on the 450 held-out ones; one thread per worker, cache off. "
        "Start-up: `start()`, spawning the workers, importing torch and loading the data "
        "(in-process for 1 worker, where torch may already be imported).",
        "",
        "| networks | workers | start-up (s) | networks/s | networks/s per core |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {name} | {w} | {s:.1f} | {r:.2f} | {r / w:.2f} |" for name, w, s, r in rows]
    lines += [
        "",
        "Costs vary by orders of magnitude (a self-attention layer on the full 32x32 map costs "
        "more than the rest of a sample together); workers start the costliest networks first, "
        "but one network never splits across workers, and on shared cores a second worker can "
        "slow the long one down.",
    ]
    return "\n".join(lines + [""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", type=int, default=12, help="random valid sequences")
    parser.add_argument("--max-train", type=int, default=None, help="cap on training images")
    parser.add_argument("--workers", default="1,0", help="worker counts (0: one per core)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    sets = {
        f"KNOWN ({len(KNOWN_ARRAY)})": KNOWN_ARRAY,
        f"random valid ({args.random})": random_valid(args.random, 0),
    }
    rows = []
    for name, seqs in sets.items():
        for workers in (int(w) for w in args.workers.split(",")):
            used, startup, rate = measure(seqs, workers, args.max_train)
            rows.append((name, used, startup, rate))
            print(f"{name}, {used} workers: start-up {startup:.1f}s, {rate:.2f} networks/s")
    text = section(rows, args)
    print(text)
    if not args.no_write:
        update_results("training", text)
        print(f"updated {RESULTS}")


if __name__ == "__main__":
    main()
