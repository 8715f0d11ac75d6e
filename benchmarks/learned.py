"""Speed of the learned generator: one cycle (sample 50, check validity, select, fine-tune) and a
whole 22-cycle run, for 1 trial and for 10 trials batched in one model stack.

    python benchmarks/learned.py      # prints the figures and updates benchmarks/RESULTS.md
    python benchmarks/learned.py --calibrate [--max-nfev 3]   # only "## learned calibrate"

Targets from issue 4: one cycle ≤ 1 s on CPU; a 22-cycle, 10-trial run ≤ 3 minutes. Issue 14:
`archrefine calibrate --generator learned` ≥ 3x faster: the same fit (Khalid et al.'s trajectory,
2 trials, the CLI's budget) as whole processes, back to back: the code of `BASELINE` (before
issue 14), today's with one worker and today's with one per core (a Jacobian's columns and the
starts at once); the fitted parameters must agree.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _results import machine, update_results

from archrefine import Config, simulate
from archrefine.experiments.evaluations import default_workers

ROOT = Path(__file__).resolve().parents[1]
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


#: the last commit before issue 14's calibrate work (every simulation in turn, pre-training
#: redone for every evaluation, the fitted point simulated twice): the baseline
BASELINE = "28e0067"
CHILD = """
import json, sys
from archrefine.experiments.calibrate import KHALID, calibrate, load_trajectory
cal = calibrate(load_trajectory(KHALID), generator="learned", **json.loads(sys.argv[1]))
print("RESULT " + json.dumps({"params": cal.params, "evaluations": cal.info.get("evaluations")}))
"""


def _whole_process(kwargs: dict, src: Path | None) -> tuple[float, dict]:
    """Wall seconds of one `calibrate` in a fresh interpreter (imports, worker processes and
    pre-training included), with `src` first on the path (the baseline's tree) when given."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(kwargs)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return seconds, json.loads(line[len("RESULT ") :])


def calibrate_section(max_nfev: int | None, baseline: str) -> str:
    """The whole learned fit as whole processes, back to back: the baseline commit's code,
    today's code with one worker, and today's with one worker per core."""
    budget = {} if max_nfev is None else {"max_nfev": max_nfev}
    rows, fits = [], []
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "archive", baseline, "src/archrefine"], cwd=ROOT, capture_output=True,
            check=True,
        ).stdout  # fmt: skip
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        runs = [(f"`{baseline}` (before)", 1, budget, Path(tmp) / "src")]
        runs += [("today", w, budget | {"workers": w}, None) for w in (1, default_workers())]
        for label, workers, kwargs, src in runs:
            load = os.getloadavg()[0]
            seconds, fit = _whole_process(kwargs, src)
            rows.append((label, workers, seconds, fit["evaluations"], load, os.getloadavg()[0]))
            fits.append(fit["params"])
            print(f"{label}, workers={workers}: {seconds:.0f} s", flush=True)
    same = all(f == fits[0] for f in fits)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "the CLI's budget" if max_nfev is None else f"max_nfev={max_nfev}"
    lines = [
        "## learned calibrate\n",
        f"{stamp} · {machine()} · load average {os.getloadavg()[0]:.1f} at the end (other "
        "work on the machine slows every run) · `python benchmarks/learned.py --calibrate"
        + ("" if max_nfev is None else f" --max-nfev {max_nfev}")
        + f'`: `calibrate(khalid2026.csv, generator="learned")`, 2 trials, {text}, each a '
        "whole process (interpreter, imports, worker processes, pre-training), back to back\n",
        "| code | workers | seconds | simulations | load average (start → end) | speed-up |",
        "|---|---|---|---|---|---|",
        *[
            f"| {c} | {w} | {t:.0f} | {n if n is not None else '–'} | {a:.1f} → {b:.1f} "
            f"| {rows[0][2] / t:.2f}× |"
            for c, w, t, n, a, b in rows
        ],
        "",
        f"Fitted parameters identical in all three: {'yes' if same else '**no**'}. " + NOTE,
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibrate", action="store_true", help="only the calibrate section")
    parser.add_argument("--max-nfev", type=int, default=None, help="calibrate's budget per start")
    parser.add_argument("--baseline", default=BASELINE, help="the commit timed as 'before'")
    args = parser.parse_args()
    if args.calibrate:
        section = calibrate_section(args.max_nfev, args.baseline)
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
