"""The simulator against the physical limit of its work on this machine.

    python benchmarks/limit.py [--trials 1000]   # prints and updates benchmarks/RESULTS.md

Per candidate, the paper loop cannot do less than (docs/performance.md):

* its random draws: d tokens sampled, 1 template pick, d mutation draws, 1 validity draw, 1
  tie-break (2d + 3; cycle 1: d + 2), plus its share of the NK tables drawn once
  (d·V^(K+1) per trial over cycles × population candidates);
* its d fitness lookups, at random places in the trial's NK table (T·d·V^(K+1) float32: 54 MB at
  1000 trials, past the 4 MB L2);
* its exact kNN: one byte-Hamming distance per archive row (nothing prunes at d = 15);
* the bytes it must move once: its tokens written and read (2·d), and its share of the prior
  (d·V float64, read to sample and written to refine) and of the archive (rows · d).

Each cost is measured here with a plain microbenchmark (numpy's PCG64 `random`, a numpy
`take` at random indices into a table of the NK tables' size, a plain numba loop of packed
byte-Hamming distances with no selection, a numpy streaming sum), the bound is their sum per
candidate, and the simulator is timed in the same run at the same size (in process, after a
warm-up), so the ratio is measured under one load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import machine, update_results  # noqa: E402

from archrefine import Config, simulate  # noqa: E402
from archrefine.core import fast  # noqa: E402


def best(fn, reps: int = 5) -> float:
    """Fastest of `reps` runs (seconds): the machine's rate with the least interference."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def rng_ns(rng: np.random.Generator) -> float:
    n = 4_000_000
    return best(lambda: rng.random(n)) / n * 1e9


def lookup_ns(rng: np.random.Generator, trials: int, n: int, d: int, cells: int) -> float:
    """Random lookups with the loop's locality: each trial's n · d lookups fall in its own
    d · cells block (one random cell per position), trial after trial."""
    table = rng.random(trials * d * cells, dtype=np.float32)
    base = (np.arange(trials * d, dtype=np.int32) * cells).reshape(trials, 1, d)
    index = base + rng.integers(0, cells, (trials, n, d), dtype=np.int32)
    return best(lambda: np.take(table, index)) / index.size * 1e9


def stream_gbs(rng: np.random.Generator, nbytes: int) -> float:
    x = rng.random(nbytes // 8)
    return nbytes / best(lambda: x.sum()) / 1e9


def pair_ns(rng: np.random.Generator, trials: int, n: int, rows: int, d: int) -> float:
    """Byte-Hamming distances of packed tokens, every query against every row, summed per query
    (no selection, nothing stored per pair)."""
    import numba

    words = -(-d // 8)
    q = fast.pack_bytes(rng.integers(0, 30, (trials, n, d)), words)
    a = np.ascontiguousarray(
        fast.pack_bytes(rng.integers(0, 30, (trials, rows, d)), words).swapaxes(1, 2)
    )
    low, ones = np.uint64(0x7F7F7F7F7F7F7F7F), np.uint64(0x0101010101010101)

    @numba.njit(nogil=True)
    def distances(q, a, out):
        for t in range(q.shape[0]):
            for j in range(q.shape[1]):
                total = np.uint64(0)
                for r in range(a.shape[2]):
                    s = np.uint64(0)
                    for w in range(q.shape[2]):
                        x = q[t, j, w] ^ a[t, w, r]
                        s += ((((x & low) + low) | x) >> np.uint64(7)) & ones
                    total += (s * ones) >> np.uint64(56)
                out[t, j] = total

    out = np.empty((trials, n), np.uint64)
    distances(q, a, out)  # compile
    return best(lambda: distances(q, a, out)) / (trials * n * rows) * 1e9


def archive_rows(cfg: Config, metrics) -> float:
    """Mean archive rows a candidate is compared with, from the run's own validity."""
    loop = cfg.loop
    valid = np.rint(
        metrics.pivot(index="trial", columns="cycle", values="validity").to_numpy()
        * loop.population
    )
    added = np.minimum(valid, loop.top_k) if loop.archive == "selected" else valid
    if loop.archive == "all":
        added = np.full_like(valid, loop.population)
    before = cfg.space.known + np.cumsum(added, axis=1) - added  # rows when the cycle starts
    return float(before.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    rows = []
    for archive in ("selected", "valid"):
        cfg = Config(trials=args.trials, seed=0).with_overrides(
            {"schedule.kind": "cosine", "loop.archive": archive}
        )
        s, loop = cfg.space, cfg.loop
        d, vocab, cycles, n = s.length, s.vocab, loop.cycles, loop.population
        cells = vocab ** (cfg.fitness.k + 1)
        simulate(cfg)  # warm-up: numba loaded, pages touched
        wall = best(lambda cfg=cfg: simulate(cfg), reps=3)
        metrics = simulate(cfg).metrics
        candidates = cfg.trials * cycles * n
        per_rows = archive_rows(cfg, metrics)
        draws = ((2 * d + 3) * (cycles - 1) + (d + 2)) / cycles + d * cells / (cycles * n)
        t_draw = rng_ns(rng)
        t_lookup = lookup_ns(rng, cfg.trials, n, d, cells)
        t_pair = pair_ns(rng, cfg.trials, n, max(1, round(per_rows)), d)
        moved = 2 * d + (2 * d * vocab * 8 + per_rows * d) / n
        bandwidth = stream_gbs(rng, 256 << 20)
        parts = {
            "random draws": draws * t_draw,
            "NK lookups": d * t_lookup,
            "kNN distances": per_rows * t_pair,
            "bytes moved": moved / bandwidth,
        }
        bound = sum(parts.values())
        actual = wall / candidates * 1e9
        rows.append(
            (
                archive,
                draws,
                t_draw,
                t_lookup,
                per_rows,
                t_pair,
                moved,
                bandwidth,
                parts,
                bound,
                actual,
            )
        )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## limit\n",
        f"{stamp} · {machine()} · load average {load:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end · "
        f"`python benchmarks/limit.py --trials {args.trials}` · numba "
        f"{'loaded' if fast.loaded() else 'not used'}\n",
        f"Paper scale, {args.trials} trials, cosine schedule; ns per candidate. Microbenchmarks: "
        "PCG64 `random` ns/draw; `take` at random indices into a float32 table of the NK tables' "
        "size, ns/lookup; plain numba packed byte-Hamming, ns/pair; numpy streaming sum, GB/s.\n",
        "| `loop.archive` | draws × ns | lookups × ns | rows × ns/pair | bytes ÷ GB/s | bound | "
        "`simulate` | ÷ bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for archive, draws, t_draw, t_lookup, per_rows, t_pair, moved, bw, parts, bound, actual in rows:
        lines.append(
            f"| {archive} | {draws:.1f} × {t_draw:.2f} = {parts['random draws']:.0f} "
            f"| 15 × {t_lookup:.1f} = {parts['NK lookups']:.0f} "
            f"| {per_rows:.0f} × {t_pair:.2f} = {parts['kNN distances']:.0f} "
            f"| {moved:.0f} B ÷ {bw:.1f} = {parts['bytes moved']:.0f} "
            f"| {bound:.0f} ns ({1e9 / bound / 1e6:.2f} M/s) "
            f"| {actual:.0f} ns ({1e9 / actual / 1e6:.2f} M/s) | **{actual / bound:.1f}×** |"
        )
    section = "\n".join(lines) + "\n"
    print(section)
    update_results("limit", section)


if __name__ == "__main__":
    main()
