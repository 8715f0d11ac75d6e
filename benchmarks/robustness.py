"""`archrefine robustness --seeds 10 --trials 100 --perturb 0` against ten `archrefine reproduce`.

    python benchmarks/robustness.py     # prints the figures and updates benchmarks/RESULTS.md

Both are run here, one after the other, as whole processes (start-up, imports and writing
included), with their default workers; the target (issue 10) is a ratio of at most 1.5. The ten
reproduce runs use seeds 1–10; the robustness study derives its ten seeds from seed 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _results import machine, update_results  # noqa: E402

SEEDS, TRIALS, TARGET = 10, 100, 1.5


def timed(args: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "archrefine", *args], check=True, capture_output=True)
    return time.perf_counter() - began


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        reproduce = sum(
            timed(["reproduce", "--trials", str(TRIALS), "--seed", str(s), "--out", f"{tmp}/r{s}"])
            for s in range(1, SEEDS + 1)
        )
        robust = timed(
            ["robustness", "--seeds", str(SEEDS), "--trials", str(TRIALS), "--perturb", "0",
             "--out", f"{tmp}/rob"]
        )  # fmt: skip
    ratio = robust / reproduce
    verdict = "meets" if ratio <= TARGET else "**misses**"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join(
        [
            "## robustness\n",
            f"{stamp} · {machine()} · load average {os.getloadavg()[0]:.1f} at the end · "
            "`python benchmarks/robustness.py`\n",
            "| measure | value | note |",
            "|---|---|---|",
            f"| ten `archrefine reproduce --trials {TRIALS}` (seeds 1–10, figures) | "
            f"{reproduce:.1f} s | {reproduce / SEEDS:.1f} s each |",
            f"| `archrefine robustness --seeds {SEEDS} --trials {TRIALS} --perturb 0` | "
            f"{robust:.1f} s | same experiments and claims code, no per-seed figures |",
            f"| ratio | **{ratio:.2f}** | {verdict} the target ≤ {TARGET} |",
        ]
    )
    print(section)
    update_results("robustness", section + "\n")


if __name__ == "__main__":
    main()
