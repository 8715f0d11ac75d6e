"""`archrefine run` of an earlier source tree against this one, as whole processes, and the peer.

    git archive COMMIT src | tar -x -C /tmp/old      # the earlier code, e.g. HEAD before a change
    python benchmarks/run_ab.py /tmp/old/src [--pin 0,1] [--reps 3] [--no-peer]

Runs `archrefine run --trials 1000 --set schedule.kind=cosine` (and with `--no-figures`;
`--archive` sets `loop.archive`, selected unless told) from each tree in turn (`PYTHONPATH` set
to it; one untimed run each first, for numba's on-disk cache), `--reps` times alternating, then
the DEAP peer (`peer_deap.py`, the same archive) once, and prints each run's wall and CPU
seconds (the process and the children it waited for), the medians and the ratios peer ÷ run.
With `--pin`, every process runs on those cores only (`taskset`): how a machine with that many
cores and nothing else running would run them, which a shared machine cannot show. It prints
only; docs/performance.md quotes it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def timed(cmd: list[str], path: str, pin: str | None) -> tuple[float, float]:
    """Wall and CPU seconds of `cmd` with PYTHONPATH `path` (and its waited-for children)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([path, os.environ.get("PYTHONPATH", "")]))
    cmd = (["taskset", "-c", pin] if pin else []) + cmd
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {err.decode(errors='replace')[-800:]}")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the earlier tree's src/ folder")
    parser.add_argument("--pin", help="cores for every process, as taskset takes them: 0,1")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-peer", action="store_true", help="skip the DEAP peer")
    parser.add_argument("--archive", choices=("selected", "valid"), default="selected",
                        help="loop.archive of every run and of the peer")  # fmt: skip
    args = parser.parse_args()
    trees = {"old": str(Path(args.old).resolve()), "new": str(SRC)}
    out = Path(os.environ.get("TMPDIR", "/tmp"))

    def run(tree: str, bare: bool) -> tuple[float, float]:
        sets = ["schedule.kind=cosine", f"loop.archive={args.archive}"]
        cmd = [sys.executable, "-m", "archrefine", "run", "--trials", "1000",
               *(x for s in sets for x in ("--set", s)),
               "--out", str(out / f"run_ab_{tree}"), "--force"]  # fmt: skip
        return timed(cmd + (["--no-figures"] if bare else []), trees[tree], args.pin)

    for tree in trees:
        run(tree, False)
    found: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    for rep in range(args.reps):
        for tree in trees:
            for bare in (False, True):
                wall, cpu = run(tree, bare)
                found.setdefault((tree, bare), []).append((wall, cpu))
                print(f"{rep} {tree} {'--no-figures' if bare else 'run'}: {wall:.2f} s wall, "
                      f"{cpu:.2f} s CPU, load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    medians = {
        key: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
        for key, v in found.items()
    }
    peer = None
    if not args.no_peer:
        cmd = [sys.executable, str(HERE / "peer_deap.py"), "--trials", "1000"]
        peer = timed(cmd + ["--archive", args.archive], str(SRC), args.pin)
        print(f"DEAP peer: {peer[0]:.1f} s wall, {peer[1]:.1f} s CPU")
    for (tree, bare), (wall, cpu) in medians.items():
        ratio = f", peer ÷ run {peer[0] / wall:.1f}× wall, {peer[1] / cpu:.1f}× CPU" if peer else ""
        name = "--no-figures" if bare else "run"
        print(f"median {tree} {name}: {wall:.2f} s wall, {cpu:.2f} s CPU{ratio}")


if __name__ == "__main__":
    main()
