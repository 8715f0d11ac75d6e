"""Mutation-rate schedules as closed forms over the cycle index.

Cycle 1 samples fresh from the prior, so the schedule's step 0 applies to cycle 2 and a schedule
spans `cycles - 1` steps. The forms are those of `torch.optim.lr_scheduler` (ConstantLR with factor
1, LinearLR, CosineAnnealingLR, CyclicLR 'triangular', CosineAnnealingWarmRestarts), which the
tests use as an oracle, so a mutation schedule reads like the learning-rate schedule it mimics.
"""

from __future__ import annotations

import numpy as np

from archrefine.core.config import ScheduleConfig

SCHEDULES = ("constant", "linear", "cosine", "cyclic")


def rates(schedule: ScheduleConfig, cycles: int) -> np.ndarray:
    """Mutation rate for each cycle 1..`cycles` (index 0 = cycle 1, which does not mutate)."""
    steps = max(cycles - 1, 1)
    t = np.arange(cycles - 1, dtype=float)  # step of cycle c is c - 2
    r0, lo = schedule.rate, schedule.min_rate
    span = max(steps - 1, 1)
    if schedule.kind == "constant":
        r = np.full_like(t, r0)
    elif schedule.kind == "linear":
        r = r0 + (lo - r0) * np.minimum(t / span, 1.0)
    elif schedule.kind == "cosine":
        r = lo + (r0 - lo) * (1 + np.cos(np.pi * np.minimum(t / span, 1.0))) / 2
    elif schedule.kind == "cyclic":
        r = _cyclic(t, lo, schedule.max_rate, schedule.period, schedule.shape)
    else:  # pragma: no cover - config validation rejects other names
        raise ValueError(f"schedule.kind: {schedule.kind!r} is not one of {', '.join(SCHEDULES)}")
    return np.concatenate([[np.nan], r])


def _cyclic(t: np.ndarray, lo: float, hi: float, period: int, shape: str) -> np.ndarray:
    if shape == "triangular":  # Smith (2017): rises from lo to hi over half a period and back
        half = period / 2
        cycle = np.floor(1 + t / (2 * half))
        x = np.abs(t / half - 2 * cycle + 1)
        return lo + (hi - lo) * np.maximum(0.0, 1 - x)
    # SGDR (Loshchilov & Hutter 2017): cosine decay from hi to lo, restarting every period
    return lo + (hi - lo) * (1 + np.cos(np.pi * (t % period) / period)) / 2
