"""How `archrefine forecast`'s band is calibrated: the development runs and their conformal
factors (scripts/forecast_eval.py --develop writes data/forecast_conformal.json from them).

The factors are only as good as the runs they are measured on. Runs drawn from the forecast's
own prior sit mostly near the defaults and at the default schedule and k, so their factors came
out near 1 and the band was confidently wrong on runs far from the defaults. The development
runs therefore draw their five generator parameters from a normal `DEV_SPREAD` times wider than
the prior (truncated to the parameter box: redrawn, not clipped, so no mass piles up at a
bound) and vary what a user's run varies — schedule, k, population — at seeds that never meet
the evaluation's (11–21). Nothing here changes the fit or the forecast's point: only how much
the band is widened.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from archrefine.core.config import Config
from archrefine.experiments.fitting import from_unit
from archrefine.experiments.forecast import conformal_factor, conformal_scores, widened
from archrefine.experiments.forecast_fit import PRIOR_SD, box, prior_centre
from archrefine.sim.loop import simulate

#: the development draw's standard deviation, in prior widths: the evaluation's far runs sit 2–3
#: prior widths from the defaults (bonus_max 4 and 1.57), i.e. 1–1.5 development widths
DEV_SPREAD = 2.0
DEV_SCHEDULES = ("constant", "linear", "cosine", "cyclic")
DEV_TOP_K = (5, 10, 20)
DEV_POPULATION = (30, 50, 80)
DEV_SEED = 200  # seeds from here: never the evaluation's 11–21 (nor the old set's 100–119)
LIVE = 0.05  # a draw whose run ends below this validity (20 trials) is skipped


def dev_draw(rng: np.random.Generator, n: int, spread: float = DEV_SPREAD) -> np.ndarray:
    """`n` parameter vectors in optimizer coordinates: normal around the prior's centre with
    `spread` × PRIOR_SD, truncated to [0, 1] (components outside are redrawn)."""
    centre = prior_centre("paper")
    sd = spread * PRIOR_SD
    out = centre + sd * rng.standard_normal((n, len(centre)))
    for _ in range(1000):
        bad = (out < 0) | (out > 1)
        if not bad.any():
            return out
        out[bad] = (centre + sd * rng.standard_normal(out.shape))[bad]
    raise RuntimeError("dev_draw: could not draw inside the box")  # pragma: no cover


def dev_runs(n: int, *, seed: int = 2027) -> list[tuple[str, list[str]]]:
    """The development runs as (name, `--set` overrides): wide parameter draws; schedule and k
    in rotation, population drawn; seeds from DEV_SEED. Draws whose run never becomes valid
    (final validity below LIVE in a 20-trial simulation) are skipped: nobody forecasts a loop
    that never writes valid code."""
    rng = np.random.default_rng(seed)
    keys, lo, hi, log = box("paper")
    out: list[tuple[str, list[str]]] = []
    run_seed = DEV_SEED - 1
    while len(out) < n:
        run_seed += 1
        values = from_unit(dev_draw(rng, 1)[0], lo, hi, log)
        over: dict[str, object] = {k: float(f"{v:.4g}") for k, v in zip(keys, values)}
        # schedule and k in rotation (4 × 3: every pair once in 12 runs), population drawn
        over["schedule.kind"] = DEV_SCHEDULES[len(out) % len(DEV_SCHEDULES)]
        over["loop.top_k"] = DEV_TOP_K[len(out) % len(DEV_TOP_K)]
        over["loop.population"] = int(rng.choice(DEV_POPULATION))
        trial = Config(trials=20, seed=run_seed).with_overrides(over)
        if simulate(trial).mean()["validity"].iloc[-1] < LIVE:
            continue
        short = ", ".join(f"{k.split('.')[1]} {v:.3g}" for k, v in over.items() if k in keys)
        name = (
            f"seed {run_seed}: {over['schedule.kind']}, k {over['loop.top_k']}, population "
            f"{over['loop.population']}; {short}"
        )
        out.append((name, [f"seed={run_seed}", *(f"{k}={v}" for k, v in over.items())]))
    return out


Band = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # point, lo, hi, observed


def leave_one_run_out(
    runs: Sequence[Band], level: float, difficulty: Sequence[float] | None = None
) -> dict[str, float]:
    """Cross-validation across development runs: each run's raw band (`runs[i]`: arrays over
    its forecast cycles, the last one its final cycle) widened by the factor measured on every
    other run, and checked against its truth. With `difficulty`, the scores are normalized
    (score ÷ the run's difficulty) and each band is widened by factor × its own difficulty, so
    it widens where the fit is unsure rather than everywhere. Returns the share of cycles and
    of final cycles held, and the widened band's mean width."""
    d = np.ones(len(runs)) if difficulty is None else np.asarray(difficulty, dtype=float)
    scores = [conformal_scores(*band) / d[i] for i, band in enumerate(runs)]
    held, last, width = [], [], []
    for i, (point, lo, hi, observed) in enumerate(runs):
        rest = [s for j, s in enumerate(scores) if j != i]
        q = conformal_factor(np.concatenate(rest), level) if rest else float("inf")
        wlo, whi = widened(point, lo, hi, q * d[i])
        ok = (np.asarray(observed) >= wlo) & (np.asarray(observed) <= whi)
        seen = np.isfinite(np.asarray(observed, dtype=float))
        held.extend(ok[seen])
        if seen[-1]:
            last.append(ok[-1])
        width.extend((whi - wlo)[seen])
    return {
        "cycles": float(np.mean(held)),
        "final": float(np.mean(last)),
        "width": float(np.mean(width)),
    }
