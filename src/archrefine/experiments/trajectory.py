"""Observed per-cycle trajectories (a real study's CSV, a run's metrics): reading and checking them.

calibrate, forecast and leave-one-out all start from one; keeping the checks here gives every
command the same one-line errors for a bad file. A CSV may also give a column's mean over the
whole run, in a row whose cycle is `all` (Khalid et al. publish the valid rate's mean over all
22 cycles, and only five of the cycles): `read_trajectory` returns those separately, because a
forecast that fits the first cycles must never see a mean that includes the rest.
"""

from __future__ import annotations

import csv
import io
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from archrefine.core.config import ConfigError
from archrefine.core.config_base import read_text_file
from archrefine.experiments.fitting import KNOWN_COLUMNS

KHALID = resources.files("archrefine") / "data" / "khalid2026.csv"


class CalibrationError(ConfigError):
    """A bad trajectory or calibration request, in one line (a ValueError, like ConfigError)."""


MAX_CYCLES = 10_000  # the most cycles a loop may run (loop.cycles' bound)
MAX_CSV_BYTES = 64 << 20  # far above MAX_CYCLES rows of every known column
RUN_MEAN = "all"  # the cycle of a row that gives means over every cycle of the run


def load_trajectory(path: str | Path) -> pd.DataFrame:
    """Read an observed trajectory CSV (`#` lines are comments); empty cells are NaN. A row of
    run means (cycle `all`) is checked and left out: `read_trajectory` returns it."""
    return read_trajectory(path)[0]


def read_trajectory(path: str | Path) -> tuple[pd.DataFrame, dict[str, float]]:
    """An observed trajectory CSV's per-cycle frame and its run means, `{column: mean over
    cycles 1 to the file's last cycle}` (empty when the file has no `all` row)."""
    path = Path(str(path))
    try:
        # a regular file of bounded size (a FIFO would block, /dev/zero fill memory); a BOM
        # (Notepad) is not in the header
        text = read_text_file(path, encoding="utf-8-sig", limit=MAX_CSV_BYTES)
        _fields(text, str(path))
        frame = pd.read_csv(
            io.StringIO(text), comment="#", skip_blank_lines=True, dtype={"cycle": str}
        )
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no such file") from None
    except OSError as err:  # a directory, no permission: one line, not a traceback
        raise CalibrationError(f"{path}: cannot read it ({err.strerror or err})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CalibrationError(f"{path}: not a readable CSV ({first})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    means: dict[str, float] = {}
    if "cycle" in frame.columns:
        whole = frame["cycle"].astype(str).str.strip().str.lower() == RUN_MEAN
        if whole.sum() > 1:
            raise CalibrationError(f"{path}: more than one row of run means (cycle {RUN_MEAN})")
        if whole.any():
            means = _run_means(frame[whole].iloc[0].drop("cycle"), str(path))
            frame = frame[~whole].reset_index(drop=True)
        _numbers(frame, str(path))
    out = check_trajectory(frame, name=str(path))
    _in_range(out, means, str(path))
    return out, means


def _fields(text: str, name: str) -> None:
    """A header naming a column twice, or a row with more fields than the header, is an error
    naming it: pandas would rename the second `x` to `x.1`, and read a row with one field too
    many as if its first field were a row label (its cycle taken from the next field)."""
    lines = ((n, line.split("#", 1)[0]) for n, line in enumerate(text.splitlines(), 1))
    header: list[str] | None = None
    for n, line in lines:
        if not line.strip():
            continue
        try:
            fields = next(csv.reader([line]))
        except (csv.Error, StopIteration):  # pandas says what is wrong with it
            return
        if header is None:
            header = [f.strip() for f in fields]
            for i, col in enumerate(header):
                if col and col in header[:i]:
                    raise CalibrationError(
                        f"{name}: column {col!r} is repeated in the header (fields "
                        f"{header.index(col) + 1} and {i + 1}); keep one"
                    )
        elif len(fields) > len(header):
            raise CalibrationError(
                f"{name}: line {n} has too many fields ({len(fields)}; the header has "
                f"{len(header)}): a stray comma, or a value without a column?"
            )


#: columns that are shares or [0, 1] scores (a CSV in percent is the usual mistake); the others
#: (counts, MinHash distances compared up to a scale) only need to be ≥ 0
FRACTIONS = ("validity", "mean_accuracy", "share_above_40", "novelty", "diversity", "fitness")


def _text(raw: pd.Series) -> pd.Series:
    """Which cells hold something that is not a number (empty cells are unobserved)."""
    filled = raw.notna() & raw.astype(str).str.strip().ne("")
    return filled & pd.to_numeric(raw, errors="coerce").isna()


def _numbers(frame: pd.DataFrame, name: str) -> None:
    """A cell that is not a number is an error naming it, not a silently unobserved cycle."""
    for col in (c for c in frame.columns if c in KNOWN_COLUMNS):
        if (bad := _text(frame[col])).any():
            i = bad.idxmax()
            raise CalibrationError(
                f"{name}: {col} at cycle {str(frame['cycle'][i]).strip()} is not a number "
                f"({frame[col][i]!r})"
            )


def _in_range(frame: pd.DataFrame, means: dict[str, float], name: str) -> None:
    """Fractions in [0, 1] and counts ≥ 0, per cycle and in the run means; finite."""
    for col in (c for c in frame.columns if c in KNOWN_COLUMNS):
        hi = 1.0 if col in FRACTIONS else np.inf
        cells = [(f"at cycle {c}", v) for c, v in zip(frame["cycle"], frame[col])]
        for at, value in [*cells, *([("(run mean)", means[col])] if col in means else [])]:
            if pd.notna(value) and not (0 <= value <= hi and np.isfinite(value)):
                allowed = "in [0, 1] (a fraction, not a percentage)" if hi == 1 else "finite, ≥ 0"
                raise CalibrationError(f"{name}: {col} {at} is {value:g}; must be {allowed}")


def _run_means(row: pd.Series, name: str) -> dict[str, float]:
    if (bad := _text(row)).any():
        raise CalibrationError(f"{name}: run mean of {', '.join(row[bad].index)} is not a number")
    values = pd.to_numeric(row, errors="coerce")
    return {str(c): float(v) for c, v in values.items() if pd.notna(v)}


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
    if frame.empty:  # only a header (or only the run means): nothing to fit or forecast
        raise CalibrationError(f"{name}: no per-cycle rows")
    out = frame.apply(pd.to_numeric, errors="coerce")
    bad = out["cycle"].isna() | (out["cycle"] < 1) | (out["cycle"] % 1 != 0)
    bad |= out["cycle"] > MAX_CYCLES  # beyond any loop (and past int64 once cast)
    if bad.any():
        raise CalibrationError(f"{name}: cycle must be whole numbers from 1 to {MAX_CYCLES}")
    out["cycle"] = out["cycle"].astype(int)
    if out["cycle"].duplicated().any():
        raise CalibrationError(f"{name}: a cycle appears twice")
    if out.drop(columns="cycle").notna().sum().sum() == 0:
        raise CalibrationError(f"{name}: no observed values")
    return out.sort_values("cycle", ignore_index=True)
