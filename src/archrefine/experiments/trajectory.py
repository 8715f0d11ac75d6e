"""Observed per-cycle trajectories (a real study's CSV, a run's metrics): reading and checking them.

calibrate, forecast and leave-one-out all start from one; keeping the checks here gives every
command the same one-line errors for a bad file.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from archrefine.core.config import ConfigError
from archrefine.experiments.fitting import KNOWN_COLUMNS

KHALID = resources.files("archrefine") / "data" / "khalid2026.csv"


class CalibrationError(ConfigError):
    """A bad trajectory or calibration request, in one line (a ValueError, like ConfigError)."""


def load_trajectory(path: str | Path) -> pd.DataFrame:
    """Read an observed trajectory CSV (`#` lines are comments); empty cells are NaN."""
    path = Path(str(path))
    try:
        frame = pd.read_csv(path, comment="#", skip_blank_lines=True)
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no such file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CalibrationError(f"{path}: not a readable CSV ({first})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return check_trajectory(frame, name=str(path))


def check_trajectory(frame: pd.DataFrame, *, name: str = "trajectory") -> pd.DataFrame:
    """Validate columns and cycles; return a copy with numeric columns and integer cycles."""
    unknown = [c for c in frame.columns if c != "cycle" and c not in KNOWN_COLUMNS]
    if "cycle" not in frame.columns:
        raise CalibrationError(f"{name}: needs a 'cycle' column (got {', '.join(frame.columns)})")
    if unknown:
        raise CalibrationError(
            f"{name}: unknown columns {', '.join(unknown)}; "
            f"known: cycle, {', '.join(KNOWN_COLUMNS)}"
        )
    if not [c for c in KNOWN_COLUMNS if c in frame.columns]:
        raise CalibrationError(f"{name}: needs at least one of {', '.join(KNOWN_COLUMNS)}")
    out = frame.apply(pd.to_numeric, errors="coerce")
    bad = out["cycle"].isna() | (out["cycle"] < 1) | (out["cycle"] % 1 != 0)
    if bad.any():
        raise CalibrationError(f"{name}: cycle must be whole numbers ≥ 1")
    out["cycle"] = out["cycle"].astype(int)
    if out["cycle"].duplicated().any():
        raise CalibrationError(f"{name}: a cycle appears twice")
    if out.drop(columns="cycle").notna().sum().sum() == 0:
        raise CalibrationError(f"{name}: no observed values")
    return out.sort_values("cycle", ignore_index=True)
