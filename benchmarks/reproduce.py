"""Speed and memory of the simulator as whole processes, against a plain DEAP peer.

    python benchmarks/reproduce.py            # prints the figures and updates benchmarks/RESULTS.md
    python benchmarks/reproduce.py --trials 200 --big 2000   # a quicker, smaller check

* `archrefine run` against `peer_deap.py` (the same loop written plainly with DEAP), both as
  whole processes (interpreter start, imports, the loop, writing results) at paper scale with
  1000 trials and the cosine schedule, for `loop.archive` = selected and valid, back to back in
  this run: candidates per second of wall time, and per CPU-second (the child's user + system
  time, which other work on a shared machine disturbs less), and the ratios. `archrefine run`
  runs once untimed first, so numba's compiled kernels are in their on-disk cache (as for any
  run after the first on a machine).
* `archrefine --help` start-up (median of 5), `archrefine reproduce` at 100 trials (wall, and
  peak RSS of the largest process) and `archrefine run` at 10,000 trials (peak RSS).
* The batched loop against `reference_loop.py`, the project's own per-candidate version of the
  model, in process: the old "267×"-style figure, kept with that label (it is not a DEAP user's
  loop, which is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _results import machine, update_results  # noqa: E402


def timed(cmd: list[str]) -> dict[str, float]:
    """Run `cmd` to completion: wall seconds, the child's CPU seconds and peak RSS (MB). Peak RSS
    is the largest process of the tree (the child or one of its waited-for children)."""
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # waited for here, not by Popen
        if proc.returncode != 0:
            log.seek(0)
            err = log.read().decode(errors="replace").strip()[-500:]
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss / 1024}


def archrefine(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "archrefine", *args]


def run_cmd(out: str, trials: int, archive: str) -> list[str]:
    sets = ["schedule.kind=cosine", f"loop.archive={archive}"]
    return archrefine(["run", "--trials", str(trials), "--out", out, "--force"]) + [
        x for s in sets for x in ("--set", s)
    ]


def loop_seconds(trials: int, archive: str) -> float:
    """`simulate` alone, in this process (after a warm-up): the loop without the fixed costs."""
    from archrefine import Config, simulate

    cfg = Config(trials=trials, seed=0).with_overrides(
        {"schedule.kind": "cosine", "loop.archive": archive}
    )
    simulate(cfg)
    start = time.perf_counter()
    simulate(cfg)
    return time.perf_counter() - start


def versus_deap(trials: int, tmp: str) -> list[str]:
    candidates = trials * 22 * 50
    timed(run_cmd(f"{tmp}/warm", trials, "selected"))  # numba's cache, the OS's file cache
    fixed = []
    lines = [
        f"Whole processes, paper scale (22 cycles × 50 candidates, top-10, k = 15), {trials} "
        f"trials = {candidates:,} candidates, cosine schedule, back to back:",
        "",
        "| `loop.archive` | `archrefine run` | DEAP peer | ratio (wall) | ratio (CPU) | "
        "`run` peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for archive in ("selected", "valid"):
        ours = timed(run_cmd(f"{tmp}/{archive}", trials, archive))
        peer = timed(
            [sys.executable, str(HERE / "peer_deap.py"), "--trials", str(trials),
             "--archive", archive]
        )  # fmt: skip
        lines.append(
            f"| {archive} | {candidates / ours['wall']:,.0f}/s ({ours['wall']:.1f} s wall, "
            f"{ours['cpu']:.1f} s CPU) | {candidates / peer['wall']:,.0f}/s "
            f"({peer['wall']:.1f} s wall, {peer['cpu']:.1f} s CPU) | "
            f"**{peer['wall'] / ours['wall']:.0f}×** | {peer['cpu'] / ours['cpu']:.0f}× | "
            f"{ours['rss']:.0f} MB |"
        )
        fixed.append((archive, ours["wall"], loop_seconds(trials, archive)))
    lines += [
        "",
        "Where `archrefine run`'s wall time goes: the loop (`simulate` in process, same config) "
        "and the rest (interpreter start, imports, a checkpoint per cycle, metrics.parquet, the "
        "figure, report.html): "
        + "; ".join(
            f"{a}: loop {loop:.1f} s ({candidates / loop:,.0f} candidates/s), rest "
            f"{whole - loop:.1f} s"
            for a, whole, loop in fixed
        )
        + ".",
    ]
    return lines


def startup_and_memory(big: int, tmp: str) -> list[str]:
    helps = [timed(archrefine(["--help"])) for _ in range(5)]
    rep = timed(archrefine(["reproduce", "--out", f"{tmp}/rep", "--force"]))
    large = timed(run_cmd(f"{tmp}/big", big, "selected"))
    return [
        "| measure | value | target |",
        "|---|---|---|",
        "| `archrefine --help` start-up (median of 5) | "
        f"{statistics.median(h['wall'] for h in helps):.2f} s wall, "
        f"{statistics.median(h['cpu'] for h in helps):.2f} s CPU | < 0.5 s |",
        f"| `archrefine reproduce` (100 trials, 4 experiments, figures) | {rep['wall']:.1f} s, "
        f"peak RSS {rep['rss']:.0f} MB (largest process) | < 300 MB |",
        f"| `archrefine run --trials {big}` | {large['wall']:.1f} s, peak RSS "
        f"{large['rss']:.0f} MB | < 4 GB at 10,000 |",
    ]


def reference_ratio() -> list[str]:
    from reference_loop import simulate_reference

    from archrefine import Config, simulate

    cfg = Config(trials=4, seed=0)
    t = time.perf_counter()
    simulate_reference(cfg)
    ref = (time.perf_counter() - t) / (cfg.trials * cfg.loop.cycles)
    big = cfg.with_overrides({"trials": 400})
    simulate(big)  # warm-up
    t = time.perf_counter()
    simulate(big)
    fast = (time.perf_counter() - t) / (big.trials * big.loop.cycles)
    return [
        "In process, against the project's own per-candidate reference loop "
        "(`reference_loop.py`; not a DEAP user's loop, which is faster, see above): one "
        f"trial-cycle {ref * 1e3:.2f} ms there, {fast * 1e3:.3f} ms batched (400 trials at once), "
        f"{ref / fast:.0f}×.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000, help="trials of the DEAP comparison")
    parser.add_argument("--big", type=int, default=10000, help="trials of the memory run")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        versus = versus_deap(args.trials, tmp)
        rest = startup_and_memory(args.big, tmp)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## reproduce\n",
        f"{stamp} · {machine()} · load average {load:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end (other work on the machine slows the absolute "
        "times; the ratios are measured back to back) · `python benchmarks/reproduce.py`\n",
        *versus,
        "",
        *rest,
        "",
        *reference_ratio(),
    ]
    section = "\n".join(lines) + "\n"
    print(section)
    update_results("reproduce", section)


if __name__ == "__main__":
    main()
