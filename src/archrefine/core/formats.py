"""How values are written into the files of a run: strict JSON and Arrow columns.

Pure functions with no file of their own (`core/store.py` writes the files atomically): every
JSON file is what a strict parser reads (`JSON.parse`, jq: a number that is not finite is
null), and a numpy column becomes an Arrow array without importing pandas.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = ["arrow_column", "dumps_strict", "finite"]


def dumps_strict(data: Any, **kwargs: Any) -> str:
    """`json.dumps` of `data` with every non-finite number null (`finite`); strict JSON."""
    return json.dumps(finite(data), allow_nan=False, default=_item, **kwargs)


def finite(data: Any) -> Any:
    """`data` (nested dicts, lists, tuples; numpy scalars and arrays) with each number that is
    not finite replaced by None."""
    if isinstance(data, float):  # numpy's float64 too
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    if type(data).__module__ == "numpy" and hasattr(data, "tolist"):  # a numpy scalar or array
        return finite(data.tolist())
    return data


def _item(x: Any) -> Any:
    if hasattr(x, "item"):
        return finite(x.item())
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def arrow_column(values: np.ndarray) -> Any:
    """A numeric numpy column as an Arrow array, NaN as null (as `Table.from_pandas` writes it),
    built from its buffer: `pa.array` would import pandas (~0.25 s) to rule out a Series."""
    import numpy as np
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    if values.dtype.kind not in "iuf":  # not one buffer of fixed-width numbers
        return pa.array(values)
    missing = np.isnan(values) if values.dtype.kind == "f" else np.zeros(len(values), bool)
    nulls = int(missing.sum())
    valid = pa.py_buffer(np.packbits(~missing, bitorder="little")) if nulls else None
    kind = pa.from_numpy_dtype(values.dtype)
    return pa.Array.from_buffers(kind, len(values), [valid, pa.py_buffer(values)], nulls)
