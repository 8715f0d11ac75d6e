"""Throughput of the grounded space: `is_valid` on one core, and build + forward per second.

    python benchmarks/space.py            # 1e6 sequences; updates "## space" in RESULTS.md
    python benchmarks/space.py --no-write

Prints the figures, including the fraction of uniformly random sequences that are valid (the
number docs/space.md quotes), and replaces only its own section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time

import numpy as np
from _results import RESULTS, machine, update_results

from archrefine.space import KNOWN_ARRAY, LENGTH, VOCAB, is_valid


def best_of(fn, repeats: int) -> tuple[float, float]:
    """Best wall-clock and best CPU seconds over `repeats` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return min(wall), min(cpu)


def checker(n: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    seqs = rng.integers(0, len(VOCAB), (n, LENGTH)).astype(np.int8)
    valid = is_valid(seqs)
    wall, cpu = best_of(lambda: is_valid(seqs), repeats)
    return {"n": n, "valid_fraction": float(valid.mean()), "per_s": n / wall, "per_cpu_s": n / cpu}


def builds(seconds: float) -> dict[str, float]:
    import torch

    from archrefine.space import build

    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    pool = rng.integers(0, len(VOCAB), (400_000, LENGTH))
    sets = {"known": KNOWN_ARRAY, "random_valid": pool[is_valid(pool)]}
    out: dict[str, float] = {}
    for name, seqs in sets.items():
        x = torch.zeros(2, 3, 32, 32)
        done, start = 0, time.perf_counter()
        with torch.no_grad():
            while time.perf_counter() - start < seconds:
                build(seqs[done % len(seqs)]).eval()(x)
                done += 1
        out[name] = done / (time.perf_counter() - start)
    return out


def section(check: dict[str, float], build_rates: dict[str, float]) -> str:
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    return "\n".join(
        [
            "## space",
            "",
            f"`python benchmarks/space.py` on {date}; {machine()}; load average "
            f"{os.getloadavg()[0]:.1f} when it finished (figures drop under load).",
            "",
            "| measure | value |",
            "|---|---|",
            f"| `is_valid`, sequences/s (one core, wall clock, best of 3, "
            f"{check['n']:,} uniform random) | {check['per_s']:,.0f} |",
            f"| `is_valid`, sequences per CPU-second | {check['per_cpu_s']:,.0f} |",
            f"| uniformly random sequences that are valid | {check['valid_fraction']:.2%} |",
            f"| `build` + forward (batch 2, one thread) per s, KNOWN | "
            f"{build_rates['known']:.1f} |",
            f"| `build` + forward per s, random valid sequences | "
            f"{build_rates['random_valid']:.1f} |",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="sequences for is_valid")
    parser.add_argument("--seconds", type=float, default=5.0, help="per build benchmark")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    check = checker(args.n, repeats=3)
    print(
        f"is_valid: {check['per_s']:,.0f} sequences/s wall, {check['per_cpu_s']:,.0f} per "
        f"CPU-second; {check['valid_fraction']:.3%} of uniform random sequences valid"
    )
    rates = builds(args.seconds)
    print(
        f"build + forward: {rates['known']:.1f}/s (KNOWN), {rates['random_valid']:.1f}/s (random)"
    )
    text = section(check, rates)
    print(text)
    if not args.no_write:
        update_results("space", text)
        print(f"updated {RESULTS}")


if __name__ == "__main__":
    main()
