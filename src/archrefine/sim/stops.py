"""Where the learned generator's pre-training stops, without torch.

`calibrate` asks `same_stop` in its main process, which runs no simulation when the fit has
worker processes: keeping this module free of torch (and of `learned.py`, which imports it)
spares that process torch's import (≈ 2 s of CPU) before its first point is sent to a worker.
"""

from __future__ import annotations


def same_stop(records: tuple[tuple[int, float], ...], target: float, other: float) -> bool:
    """Whether pre-training to `other` stops where the run that kept `records` stopped for
    `target` (then the two simulations are the same, bit for bit).

    `records` are the new-best probes `(step, validity)` of that run up to the one it stopped
    at (`learned.LAST_PRETRAINING`; empty if it ran out of steps)."""
    if not records or other > records[-1][1]:
        return False
    first = next(s for s, v in records if v >= other)
    return first == records[-1][0] and records[-1][1] >= target
