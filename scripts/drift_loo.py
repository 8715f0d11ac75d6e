"""Leave-one-cycle-out validity of regularized drift fits to Khalid et al., and of model-free
curves, for docs/rise-and-fall.md ("Can a constraint make it predict?").

    python scripts/drift_loo.py [--out runs/drift-loo] [--jobs 2] [--trials 30] [--nfev 15]
                                [--only NAME-PART] [--calibrate DIR]

Fits each variant of `archrefine.experiments.drift_fit` (MAP prior on the defaults, fewer free
parameters, shared Sobol starts) to validity and mean accuracy and refits it once per observed
cycle without that cycle; prints a markdown table and writes variants.json. Then the same
leave-one-out check for curves with no mechanism at all, through the per-token log-odds of each
valid rate (validity = 0.97 · σ(L)^15, as calibrate reads it). About 4 minutes a variant on a
lightly loaded core; `--jobs` runs variants in parallel.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from archrefine.core.config import Config
from archrefine.core.store import write_json
from archrefine.experiments.drift_fit import Variant, drift_loo
from archrefine.experiments.forecast_fit import PRIOR_SD
from archrefine.experiments.trajectory import KHALID, load_trajectory

DEFAULT_BONUS_MAX = Config().generator.bonus_max
DEFAULT_BONUS_RATE = Config().generator.bonus_rate
VARIANTS = [
    Variant("4 free, shared starts"),
    Variant("4 free, more shared starts (32 screened, 3 refined)", screen=32, keep=3),
    Variant("4 free, MAP prior on the defaults", prior_sd=PRIOR_SD),
    Variant("3 free (bonus_max at its default)", {"generator.bonus_max": DEFAULT_BONUS_MAX}),
    Variant(
        "3 free, MAP prior on the defaults",
        {"generator.bonus_max": DEFAULT_BONUS_MAX},
        prior_sd=PRIOR_SD,
    ),
    Variant(
        "3 free, wider MAP prior (0.3)", {"generator.bonus_max": DEFAULT_BONUS_MAX}, prior_sd=0.3
    ),
    # the bonus grows with the accumulated fine-tuning set (generator.bonus_growth = "set");
    # docs/rise-and-fall.md, "A rise that accelerates": these three were fixed before any fit
    Variant(
        "set growth, 3 free (bonus_max at its default)",
        {"generator.bonus_max": DEFAULT_BONUS_MAX},
        growth="set",
    ),
    Variant(
        "set growth, 3 free (bonus_rate at its default)",
        {"generator.bonus_rate": DEFAULT_BONUS_RATE},
        growth="set",
    ),
    Variant("set growth, 4 free (over the 3-parameter budget: comparison)", growth="set"),
]


def run(args: tuple) -> dict:
    """One variant's leave-one-out: (variant, trials, optimizer iterations[, run means])."""
    variant, trials, nfev, *means = args
    started = time.time()
    full, table, rmse = drift_loo(
        load_trajectory(KHALID), variant, trials=trials, max_nfev=nfev, run_means=dict(*means)
    )
    held = table[table["column"] == "validity"]
    return {
        "variant": variant.name,
        "params": full.params,
        "rmse": full.rmse,
        "loo_rmse": rmse,
        "fitted_validity": full.fitted["validity"].tolist(),
        "loo": table.to_dict("records"),
        "heldout_validity": dict(zip(map(int, held["cycle"]), held["predicted"])),
        "seconds": time.time() - started,
    }


SET_SHAPE = "set growth's shape: bonus quadratic in the cycle to its end, drift linear throughout"
#: data-free starts for it, (start log-odds, gain per step, cycle the bonus completes, drift):
#: its folds without cycle 1 or 10 have local optima that predict almost anything, so the
#: least-squares optimum is searched from many starts (`set_shape_spread` shows the spread)
SET_STARTS = np.column_stack(
    [
        np.random.default_rng(0).uniform(lo, hi, 200)
        for lo, hi in ((1, 5), (0.001, 0.2), (2, 22), (0, 0.6))
    ]
).tolist()


def set_shape(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-token log-odds of set growth without the simulator: round j teaches j steps of p[1]
    until the bonus completes at cycle p[2], and every round costs p[3]."""
    return p[0] + p[1] * np.minimum(t * (t - 1), p[2] * (p[2] - 1)) / 2 - p[3] * (t - 1)


def set_shape_spread() -> list[tuple[int, float, int, float, float]]:
    """Per fold of the set-growth shape: the held-out residual at the least-squares optimum,
    how many of `SET_STARTS` reach it (cost within 1e-12), and the 10th and 90th percentiles of
    the held-out residual over every start's end point."""
    obs = load_trajectory(KHALID).dropna(subset=["validity"])
    c, v = obs["cycle"].to_numpy(float), obs["validity"].to_numpy(float)
    out = []
    for i in range(len(c)):
        m = np.arange(len(c)) != i
        ends = [
            least_squares(lambda p, m=m: valid_rate(set_shape(p, c[m])) - v[m], np.array(s, float))
            for s in SET_STARTS
        ]
        cost = np.array([e.cost for e in ends])
        res = np.array([v[i] - valid_rate(set_shape(e.x, c[i : i + 1]))[0] for e in ends])
        best = int(np.argmin(cost))
        reach = int(np.sum(cost <= cost[best] + 1e-12))
        lo, hi = np.percentile(res, [10, 90])
        out.append((int(c[i]), float(res[best]), reach, float(lo), float(hi)))
    return out


def valid_rate(logit: np.ndarray) -> np.ndarray:
    """A valid rate from per-token log-odds, as calibrate reads one (ceiling · σ(L)^length)."""
    with np.errstate(over="ignore"):
        return 0.97 / (1 + np.exp(-logit)) ** 15


def calibrate_all_four(out: Path) -> dict:
    """`calibrate --generator drift-set` with all four parameters free (over the three-parameter
    budget; docs/rise-and-fall.md, a post-hoc comparison): calibrate's own starts, validity and
    mean accuracy, leave-one-out; written to `out` as `archrefine calibrate` writes."""
    from archrefine.experiments.calibrate import DRIFT_PARAMS, DRIFT_SET_PARAMS, calibrate
    from archrefine.experiments.calibrate_report import write_calibration
    from archrefine.experiments.loo import with_loo

    started = time.time()
    rate = "generator.bonus_rate"
    params = DRIFT_PARAMS | {rate: DRIFT_SET_PARAMS[rate]}  # bonus_max in drift's bounds
    kw = {"generator": "drift-set", "params": params, "columns": ["validity", "mean_accuracy"]}
    obs = load_trajectory(KHALID)
    cal = with_loo(calibrate(obs, **kw), obs, **kw)
    out.mkdir(parents=True, exist_ok=True)
    write_calibration(out, cal)
    return {
        "params": cal.params,
        "rmse": cal.rmse,
        "loo_rmse": cal.loo_rmse,
        "heldout_validity": {
            int(r.cycle): r.predicted for r in cal.loo.itertuples() if r.column == "validity"
        },
        "seconds": time.time() - started,
    }


def curves(
    run_mean: float | None = None, cycles: int = 22, only: str = ""
) -> list[tuple[str, float, np.ndarray]]:
    """Leave-one-out of model-free curves through the per-token log-odds of the valid rates;
    with `run_mean`, every fit also matches the curve's mean over cycles 1..`cycles` to it
    (one more residual, weighed as one valid rate: `calibrate --run-means`), and the flat
    baseline predicts the run mean itself; `only`: the curves whose name starts with it."""
    obs = load_trajectory(KHALID).dropna(subset=["validity"])
    c, v = obs["cycle"].to_numpy(float), obs["validity"].to_numpy(float)
    every = np.arange(1, cycles + 1, dtype=float)

    def misses(f, p, m) -> np.ndarray:
        data = valid_rate(f(p, c[m])) - v[m]
        return data if run_mean is None else np.r_[data, valid_rate(f(p, every)).mean() - run_mean]

    families = {
        "mean of the other cycles": (lambda p, t: p[0] + 0 * t, [[3.0]]),
        "line in per-token log-odds": (lambda p, t: p[0] + p[1] * t, [[3.0, 0.0]]),
        "parabola in per-token log-odds": (
            lambda p, t: p[0] + p[1] * (t - 12) + p[2] * (t - 12) ** 2,
            [[3, 0, 0], [3, 0.1, -0.01], [3, 0, -0.02]],
        ),
        "rise then fall, linear in per-token log-odds (the drift model's shape)": (
            lambda p, t: p[0] + p[1] * np.minimum(t - 1, p[2]) - p[3] * (t - 1),
            [[2.9, 0.2, 13, 0.15], [2.9, 0.1, 10, 0.05], [2.9, 0.3, 15, 0.1]],
        ),
        "rise that accelerates (quadratic from cycle 1), then linear fall": (
            lambda p, t: (
                p[0] + p[1] * np.minimum(t - 1, p[2]) ** 2 - p[3] * np.maximum(t - 1 - p[2], 0)
            ),
            [[2.9, 0.005, 13, 0.15], [2.9, 0.01, 12, 0.1], [2.9, 0.003, 15, 0.2]],
        ),
        SET_SHAPE: (set_shape, SET_STARTS),
    }
    out = []
    for name, (f, starts) in families.items():
        if not name.startswith(only):
            continue
        res = []
        for i in range(len(c)):
            m = np.arange(len(c)) != i
            if name.startswith("mean"):  # the mean of the valid rates themselves
                res.append(v[i] - (v[m].mean() if run_mean is None else run_mean))
                continue
            fits = [
                least_squares(lambda p, f=f, m=m: misses(f, p, m), np.array(s, float))
                for s in starts
            ]
            p = min(fits, key=lambda r: r.cost).x
            res.append(v[i] - valid_rate(f(p, c[i : i + 1]))[0])
        res = np.array(res)
        out.append((name, float(np.sqrt(np.mean(res**2))), res))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/drift-loo"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--nfev", type=int, default=15)
    parser.add_argument(
        "--only", default="", help="run only the variants whose name contains this (e.g. 'set')"
    )
    parser.add_argument(
        "--calibrate",
        type=Path,
        help="instead: calibrate drift-set with all four parameters free (+ LOO) into this dir",
    )
    args = parser.parse_args()
    if args.calibrate is not None:
        print(calibrate_all_four(args.calibrate))
        return
    variants = [v for v in VARIANTS if args.only in v.name]
    if not variants:
        parser.error(f"--only: no variant name contains {args.only!r}")
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run, [(v, args.trials, args.nfev) for v in variants]))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "variants.json", results)
    print("| fit | validity RMSE (fit) | LOO | accuracy RMSE (fit) | LOO | held-out validity |")
    print("|---|---|---|---|---|---|")
    for r in results:
        held = ", ".join(f"{p:.3f} ({c})" for c, p in r["heldout_validity"].items())
        print(
            f"| {r['variant']} | {r['rmse']['validity']:.3f} | {r['loo_rmse']['validity']:.3f} "
            f"| {r['rmse']['mean_accuracy']:.3f} | {r['loo_rmse']['mean_accuracy']:.3f} | {held} |"
        )
    print()
    for r in results:
        params = ", ".join(f"{k.split('.')[-1]} {v:.3g}" for k, v in r["params"].items())
        print(f"{r['variant']}: {params} ({r['seconds']:.0f} s)")
    print("\n| model-free curve | validity LOO RMSE | residuals (cycles 1, 10, 14, 18, 22) |")
    print("|---|---|---|")
    for name, rmse, res in curves():
        print(f"| {name} | {rmse:.3f} | {', '.join(f'{x:+.3f}' for x in res)} |")
    print(f"\n{SET_SHAPE}, per fold over {len(SET_STARTS)} data-free starts:")
    print("| left out | residual at the optimum | starts reaching it | 10-90% over starts |")
    print("|---|---|---|---|")
    for cycle, res, reach, lo, hi in set_shape_spread():
        print(f"| {cycle} | {res:+.3f} | {reach} | {lo:+.3f} to {hi:+.3f} |")
    print(f"\nwrote {args.out}/variants.json")


if __name__ == "__main__":
    main()
