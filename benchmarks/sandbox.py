"""Throughput of sandboxed validation: a cold `run_code` per candidate against a warm pool.

    python benchmarks/sandbox.py        # prints the figures and updates benchmarks/RESULTS.md

The candidate is a small 3-layer conv net; a validation is build + one forward pass on a
(2, 3, 32, 32) batch + parameter count, with the default limits. Cold: every call starts a
sandboxed worker (and imports torch in it). Warm: `SandboxPool(workers=2)` after its workers are
up. Both run in this process, one after the other, so the ratio compares like with like. The
load average is printed because a busy machine lowers both figures.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone

from _results import machine, update_results

from archrefine.sandbox.sandbox import SandboxPool, isolation_level, run_code

NET = """
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))
"""
COLD_RUNS, WARM_RUNS, WORKERS = 4, 300, 2


def cold_rate(isolation: str) -> float:
    start = time.perf_counter()
    for _ in range(COLD_RUNS):
        out = run_code(NET, isolation=isolation)
        assert out.status == "ok", out
    return COLD_RUNS / (time.perf_counter() - start)


def warm_rate(isolation: str) -> float:
    with SandboxPool(WORKERS, isolation=isolation) as pool:
        assert {o.status for o in pool.map([NET] * WORKERS * 2)} == {"ok"}  # workers are up
        start = time.perf_counter()
        outs = pool.map([NET] * WARM_RUNS)
        rate = WARM_RUNS / (time.perf_counter() - start)
    assert {o.status for o in outs} == {"ok"}, outs[0]
    return rate


def main() -> None:
    load_before = os.getloadavg()[0]
    rows = []
    levels = ["auto"] + (["rlimits"] if isolation_level().startswith("bwrap") else [])
    for isolation in levels:
        name = isolation_level(isolation)
        cold, warm = cold_rate(isolation), warm_rate(isolation)
        rows.append((name, f"{cold:.2f}/s", f"{warm:.1f}/s", f"**{warm / cold:.0f}×**"))
        print(f"{name}: cold run_code {cold:.2f}/s, warm pool {warm:.1f}/s, {warm / cold:.0f}x")
    load = max(load_before, os.getloadavg()[0])
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## sandbox\n",
        f"{stamp} · {machine()} · load average {load:.1f} · `python benchmarks/sandbox.py`\n",
        f"Validations per second of a small 3-layer conv net (build, forward on (2, 3, 32, 32),"
        f" count parameters): cold `run_code` ({COLD_RUNS} calls) against a warm"
        f" `SandboxPool(workers={WORKERS})` ({WARM_RUNS} candidates).\n",
        "| isolation | cold `run_code` | warm pool | warm / cold |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    section = "\n".join(lines) + "\n"
    print(section)
    update_results("sandbox", section)


if __name__ == "__main__":
    main()
