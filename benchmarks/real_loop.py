"""Candidates per second of the real loop, with generation and evaluation overlapped or not.

    python benchmarks/real_loop.py            # updates "## real loop" in benchmarks/RESULTS.md
    python benchmarks/real_loop.py --population 16 --cycles 1 --no-write

Two generators: the learned text generator in this process, and the same model behind the
OpenAI-compatible server on loopback (`archrefine serve`'s `GeneratorServer`, the `openai`
client). Each runs the same small loop twice in one process: with `real.overlap.OVERLAP` off
(every candidate generated, then evaluated: the order before issue 14) and on (the sandbox runs
earlier batches while the next is generated), after one untimed warm-up run (imports, data,
pre-training). The candidates and outcomes must be identical; the script checks that, so a
speed-up can never come from doing different work.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from _results import RESULTS, machine, update_results

from archrefine.real import RealConfig, overlap, run
from archrefine.real.candidates import CandidateStore
from archrefine.real.serve import GeneratorServer
from archrefine.real.text import LearnedTextGenerator

COMPARED = ["id", "cycle", "code", "status", "accuracy", "novelty", "near_duplicate", "selected"]


def once(settings: dict, out: Path, on: bool) -> tuple[float, pd.DataFrame]:
    """(seconds, the candidate rows) of one whole run, the overlap on or off."""
    overlap.OVERLAP = on
    cfg = RealConfig().with_overrides(settings)
    start = time.perf_counter()
    run(cfg, out)
    seconds = time.perf_counter() - start
    with CandidateStore(out / "candidates.sqlite") as store:
        return seconds, store.to_frame()[COMPARED]


def measure(name: str, settings: dict, tmp: Path) -> list[tuple]:
    rows, frames = [], []
    n = settings["loop.population"] * settings["loop.cycles"]
    once(settings | {"loop.population": 8}, tmp / f"{name}-warm-up", True)  # imports, caches
    for on in (False, True):
        seconds, frame = once(settings, tmp / f"{name}-{on}", on)
        frames.append(frame)
        rows.append((name, "overlapped" if on else "in turn", seconds, n / seconds))
        print(f"{name}, overlap {on}: {seconds:.1f} s, {n / seconds:.2f} candidates/s", flush=True)
    pd.testing.assert_frame_equal(frames[0], frames[1])  # the same work, the same results
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=24)
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="sandbox workers")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    base = {
        "loop.cycles": args.cycles,
        "loop.population": args.population,
        "loop.top_k": 4,
        "evaluate.workers": args.workers,
        "evaluate.max_train": 100,
        "evaluate.timeout_s": 120,
        "evaluate.memory_mb": 1024,
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="archrefine-bench-") as tmp:
        rows += measure("learned", base, Path(tmp))
        with GeneratorServer(LearnedTextGenerator(seed=3), model_name="learned") as server:
            served = {**base, "generator.kind": "openai", "generator.base_url": server.url}
            rows += measure("openai (loopback server)", served, Path(tmp))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## real loop\n",
        f"{stamp} · {machine()} · load average {os.getloadavg()[0]:.1f} at the end (other work "
        "on the machine slows both orders) · `python benchmarks/real_loop.py`: "
        f"{args.cycles} cycle(s) of {args.population} candidates, {args.workers} sandbox "
        "workers, 100 training images, after an untimed warm-up run; identical candidates and "
        "outcomes in both orders (checked)\n",
        "| generator | generation and evaluation | seconds | candidates/s | speed-up |",
        "|---|---|---|---|---|",
    ]
    for i, (name, order, seconds, rate) in enumerate(rows):
        ratio = rate / rows[i - i % 2][3]
        lines.append(f"| {name} | {order} | {seconds:.1f} | {rate:.2f} | {ratio:.2f}× |")
    section = "\n".join(lines) + "\n"
    print(section)
    if not args.no_write:
        update_results("real loop", section)
        print(f"updated {RESULTS}")


if __name__ == "__main__":
    main()
