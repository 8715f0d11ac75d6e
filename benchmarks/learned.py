"""Speed of the learned generator: one cycle (sample 50, check validity, select, fine-tune) and a
whole 22-cycle run, for 1 trial and for 10 trials batched in one model stack.

    python benchmarks/learned.py      # prints the figures and updates benchmarks/RESULTS.md
    python benchmarks/learned.py --calibrate [--max-nfev 3] [--repeat 2]   # "## learned calibrate"
    python benchmarks/learned.py --stacking   # only "## learned stacking"
    python benchmarks/learned_profile.py      # "## learned profile": where the time goes

Targets from issue 4: one cycle ≤ 1 s on CPU; a 22-cycle, 10-trial run ≤ 3 minutes. Issue 14:
`archrefine calibrate --generator learned` ≥ 3x faster: the same fit (Khalid et al.'s trajectory,
2 trials, the CLI's budget) as whole processes, back to back: the code of `BASELINE` (before
issue 14), today's with one worker and today's with one per core (a Jacobian's columns and the
starts at once); the fitted parameters must agree. `--stacking` times one fine-tuning step with
1 to 16 models stacked on the trials axis: whether running several simulations as one batched
model (the same arithmetic over a longer trials axis) would pay.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
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
    "Two workers gain only where the second core is free: under other work they compete with "
    "it for the same cores, and a round of two simulations waits for the slower "
    "(docs/performance.md has runs at both)."
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
fit = {"params": cal.params, "interval": cal.interval, "rmse": cal.rmse}
print("RESULT " + json.dumps(fit | {"evaluations": cal.info.get("evaluations")}))
"""


def _subreaper() -> bool:
    """Make this process adopt its orphaned descendants (Linux), so that the CPU time of a
    child's fork server and of the workers it forked is counted: they are not the child's own
    children, and the fork server outlives the child by a moment."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _reap() -> None:
    """Wait for every adopted descendant, so its CPU time joins RUSAGE_CHILDREN."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _whole_process(kwargs: dict, src: Path | None, tree: bool) -> tuple[float, float | None, dict]:
    """Wall and CPU seconds (user + system, the whole process tree: worker processes too where
    `tree`, else None where there were any) of one `calibrate` in a fresh interpreter (imports,
    worker processes and pre-training included), with `src` first on the path (the baseline's
    tree) when given."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(kwargs)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    _reap()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1]
    counted = tree or kwargs.get("workers", 1) == 1
    return seconds, cpu if counted else None, json.loads(line[len("RESULT ") :])


def calibrate_section(max_nfev: int | None, baseline: str, repeat: int = 1) -> str:
    """The whole learned fit as whole processes, back to back: the baseline commit's code,
    today's code with one worker, and today's with one worker per core; `repeat` rounds, every
    other one in reverse order, so that a change of load falls on every variant alike."""
    budget = {} if max_nfev is None else {"max_nfev": max_nfev}
    rows, fits, tree = [], [], _subreaper()
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "archive", baseline, "src/archrefine"], cwd=ROOT, capture_output=True,
            check=True,
        ).stdout  # fmt: skip
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        runs = [(f"`{baseline}` (before)", 1, budget, Path(tmp) / "src")]
        runs += [("today", w, budget | {"workers": w}, None) for w in (1, default_workers())]
        for r in range(repeat):
            for label, workers, kwargs, src in runs if r % 2 == 0 else runs[::-1]:
                load = os.getloadavg()[0]
                seconds, cpu, fit = _whole_process(kwargs, src, tree)
                end = os.getloadavg()[0]
                rows.append((r + 1, label, workers, seconds, cpu, fit["evaluations"], load, end))
                fits.append({k: fit[k] for k in ("params", "interval", "rmse")})
                print(f"{label}, workers={workers}: {seconds:.0f} s, CPU {cpu} s", flush=True)
    same = all(f == fits[0] for f in fits)
    med = {
        (label, w): (
            statistics.median(x[3] for x in rows if x[1:3] == (label, w)),
            _median([x[4] for x in rows if x[1:3] == (label, w)]),
        )
        for label, w, _, _ in runs
    }
    wall0, cpu0 = med[runs[0][0], 1]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "the CLI's budget" if max_nfev is None else f"max_nfev={max_nfev}"
    lines = [
        "## learned calibrate\n",
        f"{stamp} · {machine()} · load average {os.getloadavg()[0]:.1f} at the end (other "
        "work on the machine slows every run) · `python benchmarks/learned.py --calibrate"
        + ("" if max_nfev is None else f" --max-nfev {max_nfev}")
        + ("" if repeat == 1 else f" --repeat {repeat}")
        + f'`: `calibrate(khalid2026.csv, generator="learned")`, 2 trials, {text}, each a '
        "whole process (interpreter, imports, worker processes, pre-training), back to back"
        + ("" if repeat == 1 else f", {repeat} rounds, every other one in reverse order")
        + "\n",
        "| round | code | workers | seconds | CPU seconds | simulations | load average "
        "(start → end) |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r} | {c} | {w} | {t:.0f} | {_cpu(cpu)} | {n if n is not None else '–'} "
            f"| {a:.1f} → {b:.1f} |"
            for r, c, w, t, cpu, n, a, b in rows
        ],
        "",
        "| code | workers | seconds (median) | CPU seconds (median) | speed-up (wall) "
        "| CPU ÷ before |",
        "|---|---|---|---|---|---|",
        *[
            f"| {c} | {w} | {t:.0f} | {_cpu(cpu)} | **{wall0 / t:.2f}×** "
            f"| {_cpu_ratio(cpu, cpu0)} |"
            for (c, w), (t, cpu) in med.items()
        ],
        "",
        "Fitted parameters, their bootstrap intervals and the RMSE identical in every run: "
        f"{'yes' if same else '**no**'}. CPU seconds: user + system of the whole process tree"
        + (
            " (the fork server and its workers adopted and counted)"
            if tree
            else " (one worker only: the workers' time cannot be collected here)"
        )
        + "; other work on the machine moves them far less than the wall time. "
        + NOTE,
    ]
    return "\n".join(lines) + "\n"


def _median(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else statistics.median(values)


def _cpu(cpu: float | None) -> str:
    return "–" if cpu is None else f"{cpu:.0f}"


def _cpu_ratio(cpu: float | None, before: float | None) -> str:
    return "–" if cpu is None or before is None else f"{cpu / before:.2f}"


def stacking_section(rounds: int = 5, steps: int = 10) -> str:
    """Milliseconds per fine-tuning step (forward, backward, Adam; the learned defaults: batch
    32 of 15 tokens, one torch thread) for T models stacked on the trials axis, per model, the
    sizes interleaved round by round so that a change of load hits every size alike."""
    import torch

    from archrefine.core.config import LearnedConfig
    from archrefine.sim.transformer import Adam, init_params, one_thread, token_loss

    cfg, g = LearnedConfig(), torch.Generator().manual_seed(0)
    one = init_params(cfg, 30, 15, g)
    sizes, setups = (1, 2, 4, 8, 16), {}
    for t in sizes:
        p = {k: v.expand(t, *v.shape[1:]).clone().requires_grad_() for k, v in one.items()}
        data = torch.randint(30, (t, cfg.batch, 15), generator=g)
        setups[t] = (p, Adam(list(p.values()), cfg.lr), data, torch.ones(t, dtype=torch.bool))

    @one_thread
    def run(t: int, n: int) -> float:
        p, opt, data, on = setups[t]
        start = time.perf_counter()
        for _ in range(n):
            params = list(p.values())
            loss = token_loss(p, {}, data, cfg.heads)
            opt.step(params, torch.autograd.grad(loss.sum(), params), on)
        return time.perf_counter() - start

    total = dict.fromkeys(sizes, 0.0)
    for t in sizes:
        run(t, 2)  # warm-up
    load = os.getloadavg()[0]
    for _ in range(rounds):
        for t in sizes:
            total[t] += run(t, steps)
    per = {t: total[t] / (rounds * steps) * 1e3 for t in sizes}
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## learned stacking\n",
        f"{stamp} · {machine()} · load average {load:.1f} → {os.getloadavg()[0]:.1f} · "
        f"`python benchmarks/learned.py --stacking`: one fine-tuning step (forward, backward, "
        f"Adam) of the default model, batch {cfg.batch}, one torch thread, T models stacked on "
        f"the trials axis, {rounds} interleaved rounds of {steps} steps\n",
        "| models stacked (T) | ms per step | ms per model-step | per model-step ÷ at T = 2 |",
        "|---|---|---|---|",
        *[
            f"| {t} | {per[t]:.1f} | {per[t] / t:.2f} | {per[t] / t / (per[2] / 2):.2f} |"
            for t in sizes
        ],
        "",
        "A calibrate evaluation runs T = 2 (2 trials); stacking N such simulations would run "
        "T = 2N. A ratio near or above 1 at larger T means the step is bound by its arithmetic, "
        "not by per-operation overhead, and stacking saves nothing.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibrate", action="store_true", help="only the calibrate section")
    parser.add_argument("--max-nfev", type=int, default=None, help="calibrate's budget per start")
    parser.add_argument("--baseline", default=BASELINE, help="the commit timed as 'before'")
    parser.add_argument("--repeat", type=int, default=1, help="calibrate: rounds of the three")
    parser.add_argument("--stacking", action="store_true", help="only the stacking section")
    args = parser.parse_args()
    if args.stacking:
        section = stacking_section()
        print(section)
        update_results("learned stacking", section)
        return
    if args.calibrate:
        section = calibrate_section(args.max_nfev, args.baseline, args.repeat)
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
