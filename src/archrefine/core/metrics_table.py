"""What a metrics table (metrics.parquet) must hold to be read at all: numbers in its required
columns, some rows, no infinite metric, whole-number trials and cycles, a validity from 0 to 1,
no row twice. Its own module so that `store.read_metrics` can say what is wrong in one line; it
imports nothing of archrefine."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
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
    if "validity" in required and not frame["validity"].dropna().between(0, 1).all():
        return "validity (a share of candidates) outside 0 to 1"
    keys = [c for c in ("experiment", "condition", "point", *required[:2]) if c in frame]
    if frame.duplicated(keys).any():  # every row would count twice in a mean
        return f"a row repeats its {', '.join(keys)}"
    return None


def read(path: Path, required: Sequence[str]) -> pd.DataFrame | str:
    """The metrics table in the Parquet file `path`, or (a string) why it cannot be one."""
    if not path.exists():
        return "no such file"
    if not path.is_file():  # a directory there would be read as a Parquet data set
        return "not a file"
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        frame = pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f"not a readable Parquet file ({first})"
    if missing := [c for c in required if c not in frame.columns]:
        return f"not an archrefine metrics file (missing columns: {', '.join(missing)})"
    if (wrong := problem(frame, required)) is not None:  # no traceback later
        return f"corrupt metrics file ({wrong})"
    return frame
