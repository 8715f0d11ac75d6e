"""Speed of `archrefine reproduce` and of the batched loop against a per-candidate baseline.

    python benchmarks/reproduce.py            # prints the figures and updates benchmarks/RESULTS.md

* `reproduce` end to end (100 trials, all four experiments, figures included), wall time and
  peak memory (this process and its worker processes).
* The batched loop against `reference_loop.py`, the same model written one candidate at a time,
  on the same work per trial-cycle, measured in this run: the ratio is the speed-up.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _results import machine, update_results  # noqa: E402
from reference_loop import simulate_reference  # noqa: E402

from archrefine import Config, simulate  # noqa: E402


def peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "archrefine", "reproduce", "--out", f"{tmp}/rep"],
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - t
    rows.append(
        (
            "`archrefine reproduce` (100 trials, 4 experiments, figures)",
            f"{wall:.1f} s",
            f"peak RSS {peak_mb(resource.RUSAGE_CHILDREN):.0f} MB (largest process)",
        )
    )

    cfg = Config(trials=4, seed=0)
    t = time.perf_counter()
    simulate_reference(cfg)
    ref = (time.perf_counter() - t) / (cfg.trials * cfg.loop.cycles)
    big = cfg.with_overrides({"trials": 400})
    simulate(big)  # warm-up
    t = time.perf_counter()
    simulate(big)
    fast = (time.perf_counter() - t) / (big.trials * big.loop.cycles)
    rows.append(("one trial-cycle, per-candidate baseline", f"{ref * 1e3:.2f} ms", ""))
    rows.append(
        (
            "one trial-cycle, batched (400 trials at once)",
            f"{fast * 1e3:.3f} ms",
            f"**{ref / fast:.0f}× faster**",
        )
    )
    rows.append(
        ("peak RSS of the benchmark process", f"{peak_mb(resource.RUSAGE_SELF):.0f} MB", "")
    )

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## reproduce\n",
        f"{stamp} · {machine()} · load average {os.getloadavg()[0]:.1f} at the end "
        "(other work on the machine slows the absolute times, not the ratio) · "
        "`python benchmarks/reproduce.py`\n",
        "| measure | value | note |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    section = "\n".join(lines) + "\n"
    print(section)
    update_results("reproduce", section)


if __name__ == "__main__":
    main()
