"""Fit the paper model's free parameters to a stated subset of what the paper reports.

What is fitted (docs/model.md, "Calibration"): only the *constant-schedule* run, and of it only

1. cycle-1 validity, solved in closed form (not searched): with a uniform prior and no bonus
   every token is written with odds `base_logit`, so validity is ceiling · σ(base_logit)^d and
   `base_logit = logit((v1 / ceiling)^(1/d))` for the chosen v1 (`--v1`, default 0.03: the paper
   says only "low");
2. the shape of the validity curve: a continuous piecewise-linear fit with kinks fixed at the
   paper's phase boundaries (7.5, 15.5) must explain it (R²), with the middle segment the steepest
   (the paper's "rapid validity improvement" in the transition), the last one nearly flat
   (at most `--plateau` of the middle one's slope, default 0.25: "high validity") and final
   validity at least `--high` (default 0.8);
3. the constant schedule's diversity loss (claim C3), pulled to the middle of the paper's 7–18%.

Nothing else enters the loss: novelty, the other schedules, top-k and the timing of the novelty
fall are predictions, evaluated by the claim checks afterwards on other seeds. Two values are
not searched but follow rules (`with_rule`): `schedule.min_rate = 2·rate − max_rate` (the
cyclic schedule oscillates around the constant rate, so the two spend the same mutation on
average) and `generator.temperature_span = 1 − temperature` (a full rewrite decodes at
temperature 1). The search, random then local from the earlier model's values (`START`), runs
on seed 12345, which no reported number uses; the winning values are rounded and written by
hand into `config.py` and `configs/paper.toml`.

    python scripts/calibrate_paper.py --evals 400 --trials 40 > calibration.log
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from archrefine import Config, simulate

SPACE = {  # parameter: (low, high)
    "generator.bonus_max": (1.0, 8.0),
    "generator.bonus_rate": (0.03, 0.4),
    "generator.familiarity": (0.0, 2.0),
    "generator.prior_rate": (0.05, 1.0),
    "generator.smoothing": (0.0, 0.6),
    "generator.temperature": (0.05, 1.0),
    "loop.fresh_fraction": (0.0, 0.4),
    "schedule.rate": (0.5, 0.95),
}
START = {  # where the search starts: the earlier model's values, without the temperature
    "generator.bonus_max": 2.95,
    "generator.bonus_rate": 0.105,
    "generator.familiarity": 0.5,
    "generator.prior_rate": 0.51,
    "generator.smoothing": 0.42,
    "generator.temperature": 1.0,
    "loop.fresh_fraction": 0.3,
    "schedule.rate": 0.7,
}
BREAKS = (7.5, 15.5)  # the paper's phase boundaries (cycles 1–7, 8–15, 16–22)
C3_MID, C3_HALF = 0.125, 0.055  # middle and half-width of the paper's 7–18%


def base_logit(v1: float, ceiling: float, length: int) -> float:
    """The per-token odds that give cycle-1 validity `v1` (uniform prior, no bonus)."""
    p = (v1 / ceiling) ** (1.0 / length)
    return math.log(p / (1 - p))


def validity_shape(v: np.ndarray) -> dict[str, float]:
    """R² and segment slopes of the continuous piecewise-linear fit with the paper's kinks."""
    x = np.arange(1, len(v) + 1, dtype=float)
    basis = np.column_stack([np.ones_like(x), x] + [np.maximum(0.0, x - b) for b in BREAKS])
    coef, *_ = np.linalg.lstsq(basis, v, rcond=None)
    rss = float(((basis @ coef - v) ** 2).sum())
    slopes = np.cumsum(coef[1:])
    r2 = 1 - rss / float(((v - v.mean()) ** 2).sum())
    return {"r2": r2, "s1": slopes[0], "s2": slopes[1], "s3": slopes[2]}


def with_rule(point: dict) -> dict:
    """Add what follows from the point by the stated rules: the cyclic schedule oscillates around
    the constant rate (`min_rate = 2·rate − max_rate`, max_rate 1), and a full rewrite decodes
    at temperature 1 (`temperature_span = 1 − temperature`)."""
    out = dict(point)
    out["schedule.min_rate"] = round(max(0.0, 2 * point["schedule.rate"] - 1.0), 3)
    out["generator.temperature_span"] = round(1 - point["generator.temperature"], 3)
    return out


def loss(
    point: dict,
    trials: int,
    seed: int,
    v1: float,
    high: float,
    plateau: tuple[float, float] = (0.25, 10.0),
) -> tuple[float, dict]:
    base = Config(trials=trials, seed=seed)
    over = with_rule(point)
    over["generator.base_logit"] = round(
        base_logit(v1, base.generator.ceiling, base.space.length), 3
    )
    cfg = base.with_overrides({**over, "schedule.kind": "constant"})
    mean = simulate(cfg).metrics.groupby("cycle")[["validity", "diversity"]].mean()
    v, d = mean.validity.to_numpy(), mean.diversity.to_numpy()
    shape = validity_shape(v)
    c3 = 1 - d[-1] / d[0]
    total = 20 * (1 - shape["r2"])
    total += 10 * max(0.0, shape["s1"] - shape["s2"]) + 10 * max(0.0, shape["s3"] - shape["s2"])
    ratio, weight = plateau  # the last segment's slope, at most `ratio` of the middle one's
    total += weight * max(0.0, abs(shape["s3"]) - ratio * shape["s2"])
    total += 10 * max(0.0, high - v[-1])
    total += ((c3 - C3_MID) / C3_HALF) ** 2
    report = {"r2": shape["r2"], "final_validity": v[-1], "c3": c3, "v1": v[0]}
    return total, {"point": over, **{k: round(float(x), 4) for k, x in report.items()}}


def sample(rng: np.random.Generator) -> dict:
    return {k: round(float(rng.uniform(lo, hi)), 3) for k, (lo, hi) in SPACE.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--evals", type=int, default=400)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--v1", type=float, default=0.03, help="cycle-1 validity (chosen)")
    ap.add_argument("--high", type=float, default=0.8, help="least final validity ('high')")
    ap.add_argument("--start", type=str, default=None, help="JSON of a starting point")
    ap.add_argument("--plateau", type=float, default=0.25, help="most last/middle slope ratio")
    ap.add_argument("--plateau-weight", type=float, default=10.0, help="its weight in the loss")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    best = dict(START)
    if args.start:
        best.update({k: v for k, v in json.loads(args.start).items() if k in SPACE})
    plateau = (args.plateau, args.plateau_weight)
    best_loss, info = loss(best, args.trials, args.seed, args.v1, args.high, plateau)
    print(json.dumps({"eval": 0, "loss": round(best_loss, 4), **info}), flush=True)
    for i in range(1, args.evals + 1):
        if i <= args.evals // 4:
            cand = sample(rng)  # global exploration
        else:  # local: perturb one to three coordinates of the best
            cand = dict(best)
            for key in rng.choice(list(SPACE), size=rng.integers(1, 4), replace=False):
                lo, hi = SPACE[key]
                v = cand[key] + rng.normal(0, 0.1 * (hi - lo))
                cand[key] = round(float(min(max(v, lo), hi)), 3)
        value, info = loss(cand, args.trials, args.seed, args.v1, args.high, plateau)
        if value < best_loss:
            best, best_loss = cand, value
            print(json.dumps({"eval": i, "loss": round(value, 4), **info}), flush=True)


if __name__ == "__main__":
    main()
