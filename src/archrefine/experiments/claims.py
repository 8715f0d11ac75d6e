"""The paper's claims, each checked against what the experiments measured.

The paper's numbers appear here and in `checks.py`, and only there, as the `paper` column and the
tolerances: they are what a measurement is compared with, never an input to the simulation.
Every verdict comes with `confidence`, the share of bootstrap resamples of the trials in which
the claim holds (docs/claims.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from archrefine.core.analysis import (
    MIN_GAIN,
    Phases,
    bootstrap_rows,
    phases,
    row_fits,
    row_means,
    standardize,
)
from archrefine.experiments import checks
from archrefine.experiments.checks import balance  # noqa: F401  (public: plots, tests)

TOPK = (*range(1, 17), 18, 20, 22, 25, 30, 35, 40, 45, 50)
SCHEDULE_KINDS = ("constant", "linear", "cosine", "cyclic")
PHASE_SERIES = ("validity", "novelty", "diversity")
N_BOOT = 200


@dataclass
class Claim:
    id: str
    claim: str
    paper: Any
    measured: Any
    tolerance: str
    holds: bool | None  # None: not measured (the experiment it needs was not run)
    confidence: float | None = None  # share of bootstrap resamples in which it holds


CLAIM_TEXT = {
    "C1": "Three phases: exploration, transition, specialization",
    "C2": "Validity and novelty are inversely correlated",
    "C3": "Without intervention diversity falls by 7–18%",
    "C4": "Cyclic schedule keeps 94% of diversity at 99% of peak validity, the most of any",
    "C5": "Cosine decay keeps 82% of diversity",
    "C6": "As k grows validity and fitness fall, diversity rises; k=10 balances",
    "C7": "Steepest validity rise coincides with steepest novelty fall, around cycles 6–10",
}
PAPER = {
    "C1": [7.5, 15.5],
    "C2": "r < 0",
    "C3": list(checks.C3_BAND),
    "C4": {"kept": 0.94, "validity_share": 0.99, "cyclic_keeps_most": True},
    "C5": 0.82,
    "C6": {"best_k": 10},
    "C7": "cycles 6–10",
}
TOLERANCE = {
    "C1": f"2 boundaries (further kinks add < {MIN_GAIN:g} R² each), each ±2 cycles; phase shapes",
    "C2": "levels r ≤ −0.7, changes r ≤ −0.5, fixed-cycle median ρ ≤ −0.3",
    "C3": "constant's loss in [0.07, 0.18]",
    "C4": "last period: kept 0.94 ± 0.03, validity share ≥ 0.99, kept > other schedules",
    "C5": "± 0.03",
    "C6": "abs(rho) ≥ 0.8 with those signs; 10 in the 90% interval of best k",
    "C7": "both in [6, 10], |lag| ≤ 1 cycle",
}


def paper_plan(population: int, generator: str = "paper") -> dict[str, dict[str, dict]]:
    """The four experiments as condition overrides of one base config; with another generator,
    also the paper generator's trajectory in the same space, for the comparison figure."""
    plan = {
        "trajectory": {"baseline": {}},
        "topk": {f"k={k}": {"loop.top_k": k} for k in TOPK if k <= population},
        "schedules": {s: {"schedule.kind": s} for s in SCHEDULE_KINDS},
    }
    if generator != "paper":
        plan["comparison"] = {"paper": {"generator.kind": "paper"}}
    return plan


def curves(frame: pd.DataFrame, experiment: str, condition: str) -> pd.DataFrame:
    """Per-cycle means over trials of one condition."""
    sel = frame[(frame.experiment == experiment) & (frame.condition == condition)]
    return sel.groupby("cycle").mean(numeric_only=True)


def per_trial(frame: pd.DataFrame, experiment: str, condition: str, cols) -> np.ndarray:
    """`(trials, cycles, len(cols))` array of one condition."""
    sel = frame[(frame.experiment == experiment) & (frame.condition == condition)]
    wide = sel.pivot(index="trial", columns="cycle", values=list(cols))
    return np.stack([wide[c].to_numpy() for c in cols], axis=-1)


def phase_source(frame: pd.DataFrame, schedule_kind: str) -> tuple[str, str]:
    """Where to look for phases: the trajectory run, unless its schedule is cyclic, whose own
    rhythm would show as breaks; then the constant-schedule run."""
    if schedule_kind == "cyclic":
        return "schedules", "constant"
    return "trajectory", "baseline"


def detect(
    frame: pd.DataFrame, schedule_kind: str, *, n_boot: int = N_BOOT, seed: int = 0
) -> Phases:
    """Phase boundaries of the phase-source run, with bootstrap intervals."""
    exp, cond = phase_source(frame, schedule_kind)
    first = float(frame.cycle.min())
    return phases(per_trial(frame, exp, cond, PHASE_SERIES), n_boot=n_boot, seed=seed, first=first)


def retained(c: pd.DataFrame) -> float:
    """Final-cycle diversity as a share of first-cycle diversity."""
    return float(c.diversity.iloc[-1] / c.diversity.iloc[0])


def _claim(cid: str, result: checks.Check) -> Claim:
    measured, holds = result
    conf = float(np.mean(holds[1:])) if len(holds) > 1 else None
    return Claim(cid, CLAIM_TEXT[cid], PAPER[cid], measured, TOLERANCE[cid], bool(holds[0]),
                 None if conf is None else round(conf, 3))  # fmt: skip


def evaluate(
    frame: pd.DataFrame,
    found: Phases | None = None,
    *,
    schedule_kind: str | None = None,
    period: int = 4,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> list[Claim]:
    """Check claims C1–C7 on the long-format results of the four experiments.

    `found` (from `detect` on the same frame) supplies C1's reported boundaries and intervals;
    `schedule_kind` picks C1's source run as `detect` does; `period` is the cyclic schedule's
    (`schedule.period`); resamples are drawn with `seed` (use `detect`'s to fit them once).
    """
    first = float(frame.cycle.min())
    rows_of = _Rows(n_boot, seed)
    exp, cond = phase_source(frame, schedule_kind or "")
    phase_data = per_trial(frame, exp, cond, PHASE_SERIES)
    rows = rows_of(phase_data)
    fits = row_fits(row_means(standardize(phase_data), rows), first=first)
    raw = row_means(phase_data, rows)
    c1 = checks.phase_check(raw, fits, first=first, min_gain=found.min_gain if found else MIN_GAIN)
    if found is not None:
        ci90 = [list(x) for x in zip(found.low, found.high)] if len(rows) > 1 else None
        c1[0].update(boundaries=found.boundaries, ci90=ci90)
    out = [_claim("C1", c1)]

    traj = per_trial(frame, "trajectory", "baseline", ("validity", "novelty"))
    rows = rows_of(traj)
    means = row_means(traj, rows)
    resampled = (traj[rows][..., 0], traj[rows][..., 1]) if len(traj) > 1 else (None, None)
    out.append(_claim("C2", checks.inverse_check(means[..., 0], means[..., 1], *resampled)))

    present = set(frame.experiment)
    if "schedules" in present:
        sched = block(frame, "schedules", SCHEDULE_KINDS, ("diversity", "validity"))
        sm = row_means(sched, rows_of(sched))  # (rows, schedule, cycles, 2)
        div = {s: sm[:, i, :, 0] for i, s in enumerate(SCHEDULE_KINDS)}
        val = {s: sm[:, i, :, 1] for i, s in enumerate(SCHEDULE_KINDS)}
        out.append(_claim("C3", checks.loss_check({s: div[s] for s in SCHEDULE_KINDS[:3]})))
        out.append(_claim("C4", checks.cyclic_check(div, val, period)))
        out.append(_claim("C5", checks.cosine_check(div["cosine"])))
    else:
        out += [_missing(i, "schedules") for i in ("C3", "C4", "C5")]
    out.append(_selection(frame, rows_of) if "topk" in present else _missing("C6", "topk"))
    out.append(_claim("C7", checks.timing_check(means[..., 0], means[..., 1], first=first)))
    return out


class _Rows:
    """Bootstrap rows per trial count, drawn once: every condition with the same trials gets the
    same resamples (common random numbers)."""

    def __init__(self, n_boot: int, seed: int) -> None:
        self.n_boot, self.seed, self.cache = n_boot, seed, {}

    def __call__(self, data: np.ndarray) -> np.ndarray:
        t = data.shape[0]
        if t not in self.cache:
            self.cache[t] = bootstrap_rows(t, self.n_boot, self.seed)
        return self.cache[t]


def _missing(cid: str, experiment: str) -> Claim:
    """A claim whose experiment was not run (a single real loop has only the trajectory)."""
    return Claim(cid, CLAIM_TEXT[cid], None, f"needs the {experiment} experiment", "", None)


def block(frame: pd.DataFrame, experiment: str, conditions, cols) -> np.ndarray:
    """`(trials, conditions, cycles, len(cols))` array of several conditions at once (trials
    first, so one matrix product averages every condition over a resample)."""
    sel = frame[(frame.experiment == experiment) & frame.condition.isin(list(conditions))]
    order = {c: i for i, c in enumerate(conditions)}
    trials, cycles = sel.trial.nunique(), sel.cycle.nunique()
    if len(sel) != len(order) * trials * cycles:  # an incomplete grid: one pivot per condition
        return np.stack([per_trial(frame, experiment, c, cols) for c in conditions], axis=1)
    sel = sel.assign(_c=sel.condition.map(order)).sort_values(["trial", "_c", "cycle"])
    return sel[list(cols)].to_numpy(float).reshape(trials, len(order), cycles, len(cols))


def selection(frame: pd.DataFrame, *, n_boot: int = N_BOOT, seed: int = 0) -> Claim:
    """C6 alone (fig. 2 draws its best k and interval)."""
    return _selection(frame, _Rows(n_boot, seed))


def _selection(frame: pd.DataFrame, rows_of: _Rows) -> Claim:
    conds = set(frame.condition[frame.experiment == "topk"].unique())
    ks = np.array([k for k in TOPK if f"k={k}" in conds])
    data = block(frame, "topk", [f"k={k}" for k in ks], ("validity", "fitness", "diversity"))
    m = row_means(data, rows_of(data))  # (rows, k, cycles, 3)
    return _claim("C6", checks.selection_check(ks, m[:, :, -1, 0], m[:, :, -1, 1], m[..., 2]))


def as_records(claims: list[Claim]) -> list[dict]:
    return [asdict(c) for c in claims]
