"""What a metrics table (metrics.parquet) must hold to be read at all: numbers in its required
columns, some rows, no infinite metric, whole-number trials and cycles. Its own module so that
`store.read_metrics` can say what is wrong in one line; it imports nothing of archrefine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def problem(frame: pd.DataFrame, required: Sequence[str]) -> str | None:
    """What makes `frame` unusable, in a few words (None: nothing). `required` starts with the
    trial and cycle columns, then the metrics; a metric may be NaN (not measured)."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    for col in required:
        if not is_numeric_dtype(frame[col]) or is_bool_dtype(frame[col]):
            return f"{col} holds {frame[col].dtype}, not numbers"
    if frame.empty:
        return "no rows"
    for col in required[2:]:
        if frame[col].abs().eq(float("inf")).any():
            return f"{col} holds an infinite value"
    for col, low in zip(required[:2], (0, 1)):  # trials from 0, cycles from 1
        values = frame[col].to_numpy(dtype=float)
        if not ((values >= low) & (values % 1 == 0)).all():  # NaN fails both comparisons
            return f"{col} must be whole numbers ≥ {low}"
    return None
