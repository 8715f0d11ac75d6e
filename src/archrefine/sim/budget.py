"""Will a simulation fit in memory? Checked before a run starts, so a config far too large
(`trials=100000`, `loop.cycles=10000`) is refused in one line naming the estimate, instead of
failing with a traceback after its directory was made.

The estimate is a lower bound of what `simulate` must hold at once: the preallocated novelty
archive (every trial's known architectures plus what each cycle admits, int16 tokens) and the
per-cycle metric records with the frame built from them (about 11 float64 columns, twice).
Working arrays of one cycle come on top, so a config refused here could never run.
"""

from __future__ import annotations

import os
from pathlib import Path

from archrefine.core.config import Config, ConfigError
from archrefine.sim.landscapes import too_large

METRIC_COLUMNS = 11  # trial, cycle, validity, novelty, diversity, fitness, best, rate, pool, ...
TOKEN_BYTES = 2  # int16


def estimate_bytes(config: Config) -> int:
    """A lower bound on the bytes one `simulate(config)` holds at its peak."""
    loop, trials = config.loop, config.trials
    d = config.space.length if config.space.kind == "abstract" else 15
    known = config.space.known if config.space.kind == "abstract" else 0
    per_cycle = {"all": loop.population, "valid": loop.population, "selected": loop.top_k}
    archive = trials * (known + per_cycle[loop.archive] * loop.cycles) * d * TOKEN_BYTES
    metrics = 2 * METRIC_COLUMNS * 8 * trials * loop.cycles
    return archive + metrics


def machine_bytes() -> int | None:
    """Physical memory, or the cgroup's limit where that is lower (None if unknown)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit() and (total is None or int(limit) < total):
            total = int(limit)
    except OSError:
        pass
    return total


def check_memory(config: Config, available: int | None = None) -> None:
    """Refuse (ConfigError, one line) a config whose estimate exceeds the machine's memory, or
    whose NK fitness tables would be larger than `landscapes.MAX_CELLS`."""
    need = estimate_bytes(config)
    have = machine_bytes() if available is None else available
    if have is not None and need > have:
        gib = 2**30
        raise ConfigError(
            f"trials={config.trials} × loop.cycles={config.loop.cycles} needs at least "
            f"{need / gib:.1f} GiB of memory (novelty archive and metrics), more than this "
            f"machine's {have / gib:.1f} GiB: lower trials or loop.cycles"
        )
    space, fitness = config.space, config.fitness
    if fitness.kind == "nk" or (fitness.kind == "auto" and space.kind != "nasbench-graph"):
        d, v = (space.length, space.vocab) if space.kind == "abstract" else (15, 30)
        if problem := too_large(config.trials, d, v, fitness.k):
            raise ConfigError(problem)
