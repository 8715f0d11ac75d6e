"""The paper's claims, each checked against what the experiments measured.

The paper's numbers appear here, and only here, as the `paper` column of the table: they are what
a measurement is compared with, never an input to the simulation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import pearsonr, spearmanr

from archrefine.analysis import Phases, derivative, phases

TOPK = (1, 2, 5, 10, 20, 30, 50)
SCHEDULE_KINDS = ("constant", "linear", "cosine", "cyclic")
PHASE_SERIES = ("validity", "novelty", "diversity")


@dataclass
class Claim:
    id: str
    claim: str
    paper: Any
    measured: Any
    tolerance: str
    holds: bool | None  # None: not measured (the experiment it needs was not run)


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


def detect(frame: pd.DataFrame, schedule_kind: str, *, n_boot: int = 200, seed: int = 0) -> Phases:
    exp, cond = phase_source(frame, schedule_kind)
    return phases(per_trial(frame, exp, cond, PHASE_SERIES), n_boot=n_boot, seed=seed)


def retained(c: pd.DataFrame) -> float:
    """Final-cycle diversity as a share of first-cycle diversity."""
    return float(c.diversity.iloc[-1] / c.diversity.iloc[0])


def balance(validity: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Harmonic mean of (final validity / best final validity) and (diversity kept)."""
    v = validity / validity.max()
    return 2 * v * kept / (v + kept)


def evaluate(frame: pd.DataFrame, found: Phases) -> list[Claim]:
    """Check claims C1–C7 on the long-format results of the four experiments."""
    exp, cond = ("trajectory", "baseline")
    traj = curves(frame, exp, cond)
    out: list[Claim] = []

    b = [round(x, 1) for x in found.boundaries]
    ci = [f"[{lo:g}, {hi:g}]" for lo, hi in zip(found.low, found.high)]
    ok = len(b) == 2 and abs(b[0] - 7.5) <= 2 and abs(b[1] - 15.5) <= 2
    out.append(
        Claim(
            "C1",
            "Three phases: exploration, transition, specialization",
            [7.5, 15.5],
            {"boundaries": b, "ci90": ci, "three_phase_fit": found.three_phase_fit},
            "BIC picks 2 boundaries, each ±2 cycles",
            ok,
        )
    )

    r = float(pearsonr(traj.validity, traj.novelty)[0])
    out.append(
        Claim(
            "C2",
            "Validity and novelty are inversely correlated across cycles",
            "r < 0",
            round(r, 3),
            "Pearson r ≤ -0.7",
            r <= -0.7,
        )
    )

    present = set(frame.experiment)
    if "schedules" not in present:
        out += [_missing(i, "schedules") for i in ("C3", "C4", "C5")]
        out.append(_selection_claim(frame) if "topk" in present else _missing("C6", "topk"))
        out.append(_timing_claim(traj))
        return out
    sched = {s: curves(frame, "schedules", s) for s in SCHEDULE_KINDS}
    loss = {s: round(1 - retained(sched[s]), 3) for s in ("constant", "linear", "cosine")}
    out.append(
        Claim(
            "C3",
            "Without intervention diversity falls by 7–18%",
            [0.07, 0.18],
            loss,
            "each loss in [0.05, 0.21]",
            all(0.05 <= x <= 0.21 for x in loss.values()),
        )
    )

    final_v = {s: float(c.validity.iloc[-1]) for s, c in sched.items()}
    kept = retained(sched["cyclic"])
    share = final_v["cyclic"] / max(final_v.values())
    out.append(
        Claim(
            "C4",
            "Cyclic schedule keeps 94% of diversity at 99% of peak validity",
            {"kept": 0.94, "validity_share": 0.99},
            {"kept": round(kept, 3), "validity_share": round(share, 3)},
            "kept 0.94 ± 0.03, validity share ≥ 0.99",
            abs(kept - 0.94) <= 0.03 and share >= 0.99,
        )
    )

    kept = retained(sched["cosine"])
    out.append(
        Claim(
            "C5",
            "Cosine decay keeps 82% of diversity",
            0.82,
            round(kept, 3),
            "± 0.03",
            abs(kept - 0.82) <= 0.03,
        )
    )

    out.append(_selection_claim(frame) if "topk" in present else _missing("C6", "topk"))
    out.append(_timing_claim(traj))
    return out


CLAIM_TEXT = {
    "C3": "Without intervention diversity falls by 7–18%",
    "C4": "Cyclic schedule keeps 94% of diversity at 99% of peak validity",
    "C5": "Cosine decay keeps 82% of diversity",
    "C6": "As k grows validity and fitness fall, diversity rises; k=10 balances",
}


def _missing(cid: str, experiment: str) -> Claim:
    """A claim whose experiment was not run (a single real loop has only the trajectory)."""
    return Claim(cid, CLAIM_TEXT[cid], None, f"needs the {experiment} experiment", "", None)


def _timing_claim(traj: pd.DataFrame) -> Claim:
    dv, dn = derivative(traj.validity.to_numpy()), derivative(traj.novelty.to_numpy())
    cv, cn = int(np.argmax(dv)) + 1, int(np.argmin(dn)) + 1
    return Claim(
        "C7",
        "Steepest validity rise coincides with steepest novelty fall",
        "cycles 6–10",
        {"validity_rise": cv, "novelty_fall": cn},
        "both in 6–10, ≤ 2 cycles apart",
        6 <= cv <= 10 and 6 <= cn <= 10 and abs(cv - cn) <= 2,
    )


def _selection_claim(frame: pd.DataFrame) -> Claim:
    conds = [c for c in (f"k={k}" for k in TOPK) if c in set(frame.condition)]
    ks = np.array([int(c[2:]) for c in conds])
    fc = [curves(frame, "topk", c) for c in conds]
    v = np.array([c.validity.iloc[-1] for c in fc])
    f = np.array([c.fitness.iloc[-1] for c in fc])
    d = np.array([c.diversity.iloc[-1] for c in fc])
    kept = np.array([retained(c) for c in fc])
    rv, rf, rd = (float(spearmanr(ks, x)[0]) for x in (v, f, d))
    score = balance(v, kept)
    best = int(ks[int(np.argmax(score))])
    ok = rv <= -0.8 and rf <= -0.8 and rd >= 0.8 and best == 10
    return Claim(
        "C6",
        "As k grows validity and fitness fall, diversity rises; k=10 balances",
        {"best_k": 10},
        {
            "rho_validity": round(rv, 3),
            "rho_fitness": round(rf, 3),
            "rho_diversity": round(rd, 3),
            "best_k": best,
            "balance": {int(k): round(float(s), 3) for k, s in zip(ks, score)},
        },
        "abs(rho) ≥ 0.8 with those signs; best_k = 10",
        ok,
    )


def as_records(claims: list[Claim]) -> list[dict]:
    return [asdict(c) for c in claims]
