"""What checkpoints cost a simulation: every cycle against the default interval, in one run.

    python benchmarks/checkpoint.py [--trials 1000]    # prints and updates benchmarks/RESULTS.md

`simulate` at paper scale (cosine schedule) three times after a warm-up: with a checkpoint after
every cycle (`checkpoint.every_s = 0`), with the default interval, and without a checkpoint file.
Counts the writes and times them (`Checkpoint.write`: building the bytes, the write, the fsync,
the rename) and the in-memory captures of the cycles between writes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _results import machine, update_results  # noqa: E402

from archrefine.core.config import CheckpointConfig, Config  # noqa: E402
from archrefine.sim import checkpoint as ck  # noqa: E402
from archrefine.sim.loop import simulate  # noqa: E402

SPENT: dict[str, list[float]] = {"write": [], "capture": []}


def _timed(name: str, method):
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            SPENT[name].append(time.perf_counter() - start)

    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    args = parser.parse_args()
    ck.Checkpoint.write = _timed("write", ck.Checkpoint.write)
    ck.Checkpoint.capture = _timed("capture", ck.Checkpoint.capture)
    cfg = Config(trials=args.trials).with_overrides({"schedule.kind": "cosine"})
    default = CheckpointConfig().every_s
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        simulate(cfg)  # warm-up: numba's kernels, memory
        for label, every in (("every cycle (`every_s = 0`)", 0.0), (f"`every_s = {default:g}`",
                             default), ("no checkpoint file", None)):  # fmt: skip
            for spent in SPENT.values():
                spent.clear()
            path = None if every is None else Path(tmp) / "c.bin"
            run = cfg if every is None else cfg.with_overrides({"checkpoint.every_s": every})
            start = time.perf_counter()
            simulate(run, checkpoint=path)
            whole = time.perf_counter() - start
            size = path.stat().st_size / 1e6 if path is not None else 0.0
            writes, captures = SPENT["write"], SPENT["capture"]
            rows.append(
                f"| {label} | {len(writes)} × {size:.1f} MB | "
                f"{sum(writes):.3f} s ({1e3 * sum(writes) / max(len(writes), 1):.1f} ms each) | "
                f"{1e3 * sum(captures):.1f} ms ({len(captures)}) | {whole:.2f} s |"
            )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join(
        [
            "## checkpoint\n",
            f"{stamp} · {machine()} · load average {load:.1f} at the start, "
            f"{os.getloadavg()[0]:.1f} at the end · `python benchmarks/checkpoint.py`\n",
            f"`simulate` at {args.trials} trials, paper scale, cosine schedule, after a warm-up:",
            "",
            "| checkpoints | writes | writing | captures (count) | `simulate` |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    print(section)
    update_results("checkpoint", section + "\n")


if __name__ == "__main__":
    main()
