"""Speed and memory of the simulator as whole processes, against a plain DEAP peer.

    python benchmarks/reproduce.py            # prints the figures and updates benchmarks/RESULTS.md
    python benchmarks/reproduce.py --trials 200 --big 2000   # a quicker, smaller check
    python benchmarks/reproduce.py --memory-only   # only `reproduce`'s memory and the imports rows

* `archrefine run` against `peer_deap.py` (the same loop written plainly with DEAP), both as
  whole processes (interpreter start, imports, the loop, writing results) at paper scale with
  1000 trials and the cosine schedule, for `loop.archive` = selected and valid, back to back in
  this run: candidates per second of wall time, and per CPU-second (the child's user + system
  time, which other work on a shared machine disturbs less), and the ratios, in `BLOCKS` blocks
  that each time the peer afresh (the peer's own speed drifts with the machine). Both the default
  `run` (config.toml, metrics.parquet, checkpoint.bin, trajectory.png, report.html) and
  `run --no-figures` (no figure, no report.html) are timed; the DEAP peer writes no file.
  The kernels' ahead-of-time module (`core/aot.py`) is built first and `archrefine run` runs
  once untimed, so the kernels are compiled and on disk (as for any run after the first on a
  machine).
* Where a default `run`'s time goes, stage by stage, in one process (`_stages.py`), and
  `simulate` called twice in a fresh process, with the ahead-of-time kernels, numba's JIT and
  no numba (CPU seconds): what the first call costs beyond the loop.
* `archrefine --help` start-up (median of 5), `archrefine reproduce` at 100 trials (wall; peak
  RSS of the largest single process of its tree, from the kernel's `ru_maxrss`, and the peaks of
  the tree's summed RSS and summed PSS, sampled from /proc every 50 ms) and `archrefine run` at
  10,000 trials (peak RSS).
* The batched loop against `reference_loop.py`, the project's own per-candidate version of the
  model, in process: the old "267×"-style figure, kept with that label (it is not a DEAP user's
  loop, which is faster).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _results import RESULTS, machine, update_results  # noqa: E402

from archrefine.core import fast  # noqa: E402


def tree_rss(root: int) -> tuple[int, int, dict[int, int]]:
    """Summed resident set and proportional set (bytes) of process `root` and its descendants,
    and each one's resident set, from /proc. RSS counts a page shared by forked processes once
    in each of them; PSS divides it among them, so their PSS adds up to what the tree holds."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        pid = int(entry.name)
        parents[pid], rss[pid] = int(fields[1]), int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, pss, each, frontier = 0, 0, {}, [root]
    while frontier:
        pid = frontier.pop()
        each[pid] = rss.get(pid, 0)
        total += each[pid]
        pss += _pss(pid)
        frontier += [c for c, parent in parents.items() if parent == pid]
    return total, pss, each


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            return next((int(x.split()[1]) * 1024 for x in fh if x.startswith("Pss:")), 0)
    except OSError:  # gone meanwhile, or a kernel without smaps_rollup
        return 0


def timed(cmd: list[str], tree: bool = False, capture: bool = False) -> dict[str, Any]:
    """Run `cmd` to completion: wall seconds, the child's CPU seconds and peak RSS (MB). Peak RSS
    is the largest single process of the tree (the child or one of its waited-for children:
    Linux's `ru_maxrss` of a waited-for child is the max, not the sum). With `tree`, also
    `tree_rss` and `tree_pss`: the peaks of the whole tree's summed RSS and PSS, and `procs`:
    each process's peak RSS (the command's first), all sampled every 50 ms. With `capture`,
    `stdout`: what it printed."""
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        out = subprocess.PIPE if capture else subprocess.DEVNULL
        proc = subprocess.Popen(cmd, stdout=out, stderr=log)
        peak, each, done = [0, 0], {proc.pid: 0}, threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                total, pss, now = tree_rss(proc.pid)
                peak[:] = max(peak[0], total), max(peak[1], pss)
                for pid, rss in now.items():
                    each[pid] = max(each.get(pid, 0), rss)

        sampler = threading.Thread(target=sample, daemon=True)
        if tree:
            sampler.start()
        printed = proc.stdout.read().decode() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        if tree:
            sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)  # waited for here, not by Popen
        if proc.returncode != 0:
            log.seek(0)
            err = log.read().decode(errors="replace").strip()[-500:]
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss / 1024,
            "tree_rss": peak[0] / 2**20, "tree_pss": peak[1] / 2**20,
            "procs": [x / 2**20 for x in each.values()], "stdout": printed}  # fmt: skip


REPS = 5
"""`archrefine run` and `run --no-figures` are each timed this many times per block (alternating;
the median is shown)."""
BLOCKS = 3
"""Blocks per archive: the DEAP peer once, then its `REPS` runs of each kind. The peer's 1–2
minutes vary with the machine by more than a 2-second process does (75–114 s on the same 2-core
machine, hours apart: docs/performance.md), so each block's ratio uses its own peer, and the
median block is shown with the range over all blocks."""


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median wall time, with the median CPU time and the largest peak RSS."""
    middle = sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]
    cpu = statistics.median(r["cpu"] for r in runs)
    return dict(middle, cpu=cpu, rss=max(r["rss"] for r in runs))


def archrefine(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "archrefine", *args]


def run_cmd(out: str, trials: int, archive: str, *extra: str) -> list[str]:
    sets = ["schedule.kind=cosine", f"loop.archive={archive}"]
    return archrefine(["run", "--trials", str(trials), "--out", out, "--force", *extra]) + [
        x for s in sets for x in ("--set", s)
    ]


def stages(trials: int, archive: str, out: str) -> dict[str, dict[str, float]]:
    """A default `run`, timed stage by stage in its own process (`_stages.py`); `start` is
    the interpreter's start-up and exit (the process's wall time beyond the script's, its CPU
    before)."""
    cmd = run_cmd(out, trials, archive)
    whole = timed([sys.executable, str(HERE / "_stages.py"), *cmd[3:]], capture=True)
    found = json.loads(whole["stdout"].strip().splitlines()[-1])
    found["start"]["wall"] = whole["wall"] - found["total"]["wall"]
    return found


FIRST_AND_SECOND = """
import json, sys, time
from archrefine import Config, simulate
cfg = Config(trials=int(sys.argv[1]), seed=0).with_overrides(
    {"schedule.kind": "cosine", "loop.archive": sys.argv[2]})
spent = []
for _ in range(2):
    start = time.process_time()
    simulate(cfg)
    spent.append(time.process_time() - start)
print(json.dumps(spent))
"""


SWITCHES = {"aot": {}, "jit": {"ARCHREFINE_NO_AOT": "1"}, "numpy": {"ARCHREFINE_NO_NUMBA": "1"}}


def first_and_second(trials: int, archive: str, kernels: str) -> list[float]:
    """CPU seconds of `simulate` called twice in one fresh process: the first call pays for
    loading the kernels (`kernels`: the ahead-of-time module, numba's JIT from its cache, or
    none) and first touches of memory, the second is the loop alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHREFINE_NO_")}
    env.update(SWITCHES[kernels])
    cmd = [sys.executable, "-c", FIRST_AND_SECOND, str(trials), archive]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratio_range(blocks: list[tuple[dict[str, Any], ...]], i: int) -> str:
    """The range of the blocks' wall ratios, peer (element 0) ÷ element `i`."""
    found = sorted(b[0]["wall"] / b[i]["wall"] for b in blocks)
    return f"({found[0]:.0f}–{found[-1]:.0f}×)"


def versus_deap(trials: int, tmp: str) -> list[str]:
    candidates = trials * 22 * 50
    fast.build_ahead()  # the kernels' module (core/aot.py), as after any earlier run
    timed(run_cmd(f"{tmp}/warm", trials, "selected"))  # the OS's file cache
    fixed = []

    def rate(t: dict[str, float]) -> str:
        return f"{candidates / t['wall']:,.0f}/s ({t['wall']:.1f} s wall, {t['cpu']:.1f} s CPU)"

    def ratio(peer: dict[str, float], ours: dict[str, float]) -> str:
        return f"**{peer['wall'] / ours['wall']:.0f}×** / {peer['cpu'] / ours['cpu']:.0f}×"

    lines = [
        f"Whole processes, paper scale (22 cycles × 50 candidates, top-10, k = 15), {trials} "
        f"trials = {candidates:,} candidates, cosine schedule. {BLOCKS} blocks per archive, each "
        f"the DEAP peer once, then `run` and `run --no-figures` {REPS} times each, alternating; "
        "a block's ratio is its peer ÷ the median of its runs, and the row is the median block "
        "(wall / CPU), with the range of the blocks' wall ratios. `run` writes config.toml, "
        "metrics.parquet, checkpoint.bin, trajectory.png and report.html; `run --no-figures` "
        "the first three; the DEAP peer writes nothing.",
        "",
        "| `loop.archive` | DEAP peer | `archrefine run` | ratio | `run --no-figures` | ratio | "
        "`run` peak RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for archive in ("selected", "valid"):
        blocks = []
        for _ in range(BLOCKS):
            peer = timed(
                [sys.executable, str(HERE / "peer_deap.py"), "--trials", str(trials),
                 "--archive", archive]
            )  # fmt: skip
            runs: dict[str, list[dict[str, Any]]] = {"ours": [], "bare": []}
            for _ in range(REPS):
                runs["ours"].append(timed(run_cmd(f"{tmp}/{archive}", trials, archive)))
                bare = run_cmd(f"{tmp}/{archive}-bare", trials, archive, "--no-figures")
                runs["bare"].append(timed(bare))
            blocks.append((peer, *(median_run(r) for r in runs.values())))
        middle = sorted(blocks, key=lambda b: b[0]["wall"] / b[1]["wall"])[BLOCKS // 2]
        peer, ours, bare = middle
        ratios = [ratio_range(blocks, i) for i in (1, 2)]
        lines.append(
            f"| {archive} | {rate(peer)} | {rate(ours)} | {ratio(peer, ours)} {ratios[0]} | "
            f"{rate(bare)} | {ratio(peer, bare)} {ratios[1]} | "
            f"{max(b[1]['rss'] for b in blocks):.0f} MB |"
        )
        fixed.append((archive, *(first_and_second(trials, archive, k) for k in SWITCHES)))
    steps = stages(trials, "selected", f"{tmp}/stages")
    names = {
        "start": "interpreter start-up and exit",
        "imports": "imports (CLI, config, numpy, the simulator; not pandas), run directory, "
        "helpers forked",
        "simulate": "`simulate` (numba's kernels loaded before the first cycle; fitness and "
        "novelty on a second thread)",
        "metrics": "metrics.parquet",
        "figure": "trajectory.png (the helper draws it: the wait for it)",
        "close": "run.json",
        "report": "report.html (built by the second helper while the figure is drawn: the "
        "wait for it to be written)",
    }
    lines += [
        "",
        "Where a default `run`'s time goes (`loop.archive` = selected, one process, "
        "`benchmarks/_stages.py`):",
        "",
        "| stage | wall | CPU |",
        "|---|---|---|",
        *(
            f"| {label} | {steps[k]['wall']:.2f} s | {steps[k]['cpu']:.2f} s |"
            for k, label in names.items()
        ),
        f"| the helper processes (their own CPU, on the other core) | – | "
        f"{steps['helper']['cpu']:.2f} s |",
        f"| total | {steps['total']['wall'] + steps['start']['wall']:.2f} s | "
        f"{steps['total']['cpu'] + steps['helper']['cpu']:.2f} s |",
        "",
        "`simulate` called twice in one fresh process, CPU seconds of the first call / the "
        "second (the loop alone, candidates per CPU-second), with the kernels compiled ahead "
        "of time (the default), from numba's JIT cache (`ARCHREFINE_NO_AOT=1`) and without "
        "numba (`ARCHREFINE_NO_NUMBA=1`): "
        + "; ".join(
            f"{a}: {fast[0]:.2f} / {fast[1]:.2f} s ({candidates / fast[1]:,.0f}/s), JIT "
            f"{jit[0]:.2f} / {jit[1]:.2f} s, without numba {slow[0]:.2f} / {slow[1]:.2f} s"
            for a, fast, jit, slow in fixed
        )
        + ".",
    ]
    return lines


REPRODUCE_ROW = "| `archrefine reproduce` (100 trials"


def reproduce_memory(tmp: str) -> str:
    """The `reproduce` row: wall time, the largest process's peak RSS, the tree's peak summed
    RSS and PSS (its workers: one per core)."""
    rep = timed(archrefine(["reproduce", "--out", f"{tmp}/rep", "--force"]), tree=True)
    main, *others = (round(x) for x in rep["procs"])
    return (
        f"{REPRODUCE_ROW}, 4 experiments, figures, {os.cpu_count()} cores) | "
        f"{rep['wall']:.1f} s, peak RSS {rep['rss']:.0f} MB (largest process); the whole tree's "
        f"summed RSS peaked at {rep['tree_rss']:.0f} MB, its PSS (shared pages counted once) at "
        f"{rep['tree_pss']:.0f} MB; sampled peaks: main process {main} MB, the "
        f"{len(others)} others {', '.join(map(str, sorted(others, reverse=True)))} MB | < 300 MB |"
    )


def memory_only() -> None:
    """`--memory-only`: measure `reproduce` and the imports alone and replace their rows of
    RESULTS.md's section."""
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        row = reproduce_memory(tmp)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    row = row.replace(" | < 300 MB |", f" ({stamp}, load {load:.1f}, `--memory-only`) | < 300 MB |")
    text = RESULTS.read_text()
    for prefix, new in ((REPRODUCE_ROW, row), (IMPORTS_ROW, imports_row())):
        print(new)
        old = next((x for x in text.splitlines() if x.startswith(prefix)), None)
        if old is None:
            raise SystemExit("RESULTS.md has no such row yet: run the whole benchmark once")
        text = text.replace(old, new)
    RESULTS.write_text(text)


def startup_and_memory(big: int, tmp: str) -> list[str]:
    helps = [timed(archrefine(["--help"])) for _ in range(5)]
    rep_row = reproduce_memory(tmp)
    large = timed(run_cmd(f"{tmp}/big", big, "selected"))
    return [
        "| measure | value | target |",
        "|---|---|---|",
        "| `archrefine --help` start-up (median of 5) | "
        f"{statistics.median(h['wall'] for h in helps):.2f} s wall, "
        f"{statistics.median(h['cpu'] for h in helps):.2f} s CPU | < 0.5 s |",
        rep_row,
        f"| `archrefine run --trials {big}` | {large['wall']:.1f} s, peak RSS "
        f"{large['rss']:.0f} MB | < 4 GB at 10,000 |",
        imports_row(),
    ]


IMPORTS_ROW = "| peak RSS of a fresh interpreter that imports"
LEAN_GRID = "import numpy, pandas; from archrefine.sim.elites import EliteArchive; " + (
    "EliteArchive(1, 15, 10, 'abstract', 30, 0)"
)


def imports_row() -> str:
    """What imports alone cost: numpy and pandas, pyribs' whole package, and the simulator's
    MAP-Elites grid (`sim/elites.py` loads only pyribs' grid module)."""
    base = timed([sys.executable, "-c", "import numpy, pandas"])
    ribs = ""
    if importlib.util.find_spec("ribs") is not None:  # the `interventions` extra
        found = timed([sys.executable, "-c", "import ribs.archives"])
        lean = timed([sys.executable, "-c", LEAN_GRID])
        ribs = (
            f"; `import ribs.archives`: {found['rss']:.0f} MB; numpy, pandas and the "
            f"simulator's MAP-Elites grid (`sim/elites.py`): {lean['rss']:.0f} MB"
        )
    return f"{IMPORTS_ROW} … | `numpy, pandas`: {base['rss']:.0f} MB{ribs} | – |"


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
    parser.add_argument(
        "--memory-only", action="store_true", help="only `reproduce`'s memory row (a minute)"
    )
    args = parser.parse_args()
    if args.memory_only:
        memory_only()
        return
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
