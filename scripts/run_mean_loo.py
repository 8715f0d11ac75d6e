"""How far the published run mean carries the leave-one-cycle-out check of set-growth drift, for
docs/rise-and-fall.md ("The run mean: what the other 17 cycles say").

    python scripts/run_mean_loo.py [--out runs/run-mean-loo] [--seeds 1,2,3] [--jobs 2]
        [--trials 30] [--seeds-only]

Three checks of `archrefine calibrate --generator drift-set --params (all four) --columns
validity,mean_accuracy --run-means --loo`, each written to variants.json and printed as tables:

* the same calibration at seeds it was not developed on (seed 0 is the documented one): the
  leave-one-out RMSE per seed;
* the leak: the run mean includes the left-out cycle with weight 1/22. Each fold is refitted
  with the run mean moved by ±δ/22, what it would be had the left-out valid rate been δ higher
  or lower, and the prediction's change ÷ δ is how much of a miss the mean passes on (0: the
  fold is blind to its cycle; 1: it copies it);
* model-free curves (scripts/drift_loo.py) fitted with and without the run mean;
* the same model from data-free starts (`drift_fit`: the defaults and 16 Sobol points of the
  box, the best two refined), where calibrate's starts read each fold's peak off its cycles;
  `--fold-losses` then compares, fold by fold, the loss each kind of start ends at (the same
  objective: residuals over the fold's cycles and the run mean) and what each predicts.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from drift_loo import curves, run

from archrefine.core.config import Config
from archrefine.core.store import write_json
from archrefine.experiments.calibrate import DRIFT_PARAMS, DRIFT_SET_PARAMS, calibrate
from archrefine.experiments.drift_fit import Variant, fit_drift
from archrefine.experiments.fitting import (
    observe,
    residual_scales,
    residual_table,
    simulate_candidates,
    spread,
)
from archrefine.experiments.loo import leave_one_out, observed_cycles
from archrefine.experiments.trajectory import KHALID, read_trajectory

RATE = "generator.bonus_rate"
#: the fit of docs/rise-and-fall.md: drift-set with all four parameters free (bonus_max in
#: drift's bounds, bonus_rate in set growth's), validity and mean accuracy, 30 trials
FIT = {
    "generator": "drift-set",
    "params": DRIFT_PARAMS | {RATE: DRIFT_SET_PARAMS[RATE]},
    "columns": ["validity", "mean_accuracy"],
    "trials": 30,
}
DELTA = 0.2  # the left-out valid rate's assumed change for the leak check


def observed() -> tuple:
    frame, means = read_trajectory(KHALID)
    return frame, means, int(frame["cycle"].max())


def seed_loo(seed: int, trials: int = FIT["trials"]) -> dict:
    """Leave-one-out of the fit at one seed (common random numbers within the seed)."""
    frame, means, cycles = observed()
    started = time.time()
    fit = FIT | {"trials": trials}
    table, rmse = leave_one_out(frame, seed=seed, run_means=means, cycles=cycles, **fit)
    held = table[table["column"] == "validity"]
    return {
        "seed": seed,
        "trials": trials,
        "loo_rmse": rmse,
        "heldout_validity": dict(zip(held["cycle"].astype(int), held["predicted"])),
        "seconds": time.time() - started,
    }


def leak(cycle: int) -> dict:
    """One fold refitted with the run mean as it would be had `cycle`'s valid rate been ±DELTA:
    the held-out prediction's change per unit change of the left-out value."""
    frame, means, cycles = observed()
    obs, use = observed_cycles(frame, FIT["columns"])
    train = obs[obs["cycle"] != cycle]
    scales = {c: spread(obs[c]) for c in use}  # as leave_one_out weighs every fold
    predicted = {}
    for sign in (-1, 1):
        shifted = {"validity": means["validity"] + sign * DELTA / cycles}
        fit = calibrate(
            train, seed=0, n_boot=0, run_means=shifted, cycles=cycles, scales=scales, **FIT
        )
        predicted[sign] = float(fit.fitted["validity"].iloc[cycle - 1])
    return {
        "cycle": cycle,
        "predicted": predicted,
        "leak": (predicted[1] - predicted[-1]) / (2 * DELTA),
    }


def shared_starts(_: int = 0) -> dict:
    """Leave-one-out of set growth, four free, with the run mean, from data-free starts."""
    variant = Variant("set growth, 4 free, shared starts, run mean", growth="set")
    return run((variant, FIT["trials"], 15, observed()[1]))  # drift_loo's own defaults


def fold_loss(cycle: int) -> dict:
    """Fold `cycle`: calibrate's fit and the data-free starts' fit, each scored on the same
    objective (the fold's residuals and the run mean, seed 0), with its held-out prediction."""
    frame, means, cycles = observed()
    obs, use = observed_cycles(frame, FIT["columns"])
    train = obs[obs["cycle"] != cycle]
    scales = {c: spread(obs[c]) for c in use}
    base = Config().with_overrides(
        {"generator.kind": "paper", "trials": FIT["trials"], "seed": 0, "loop.cycles": cycles}
    )
    cal = calibrate(train, seed=0, n_boot=0, run_means=means, cycles=cycles, scales=scales, **FIT)
    free = fit_drift(train, Variant("set, 4 free", growth="set"), base, scales, 15, means)
    out = {"cycle": cycle}
    for name, params in (("calibrate", cal.params), ("data-free", free.params)):
        sim = simulate_candidates(base.with_overrides(params | {"generator.bonus_growth": "set"}))
        table = residual_table(train, observe(sim, train)[0], means)
        r = np.nan_to_num(table["residual"].to_numpy() / residual_scales(table, scales), nan=1.0)
        out[name] = {"loss": float(r @ r), "predicted": float(sim.validity[cycle - 1])}
    return out


def print_seeds(by_seed: list[dict]) -> None:
    print("| seed | validity LOO | accuracy LOO | held-out validity (cycle) |\n|---|---|---|---|")
    for r in by_seed:
        held = ", ".join(f"{p:.3f} ({c})" for c, p in r["heldout_validity"].items())
        print(
            f"| {r['seed']} | {r['loo_rmse']['validity']:.3f} "
            f"| {r['loo_rmse']['mean_accuracy']:.3f} | {held} |"
        )
    for column in ("validity", "mean_accuracy"):
        v = np.array([r["loo_rmse"][column] for r in by_seed])
        sd = v.std(ddof=1) if v.size > 1 else 0.0
        print(f"{column}: mean {v.mean():.3f} ± {sd:.3f} (s.d.), median {np.median(v):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/run-mean-loo"))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-starts", action="store_true", help="skip the data-free starts")
    parser.add_argument(
        "--trials", type=int, default=FIT["trials"], help="simulated trials per seed's fits (30)"
    )
    parser.add_argument(
        "--seeds-only", action="store_true", help="only the per-seed leave-one-out table"
    )
    parser.add_argument(
        "--fold-losses", action="store_true", help="only: each fold's loss from both kinds of start"
    )
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    frame, means, cycles = observed()
    folds = [int(c) for c in frame.dropna(subset=["validity"])["cycle"]]
    if args.fold_losses:
        with ProcessPoolExecutor(args.jobs) as pool:
            losses = list(pool.map(fold_loss, folds))
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "fold_losses.json", losses)
        print(
            "| left out | calibrate's starts: loss, predicted | data-free starts: loss, predicted |"
        )
        print("|---|---|---|")
        for r in losses:
            a, b = r["calibrate"], r["data-free"]
            print(
                f"| {r['cycle']} | {a['loss']:.3f}, {a['predicted']:.3f} "
                f"| {b['loss']:.3f}, {b['predicted']:.3f} |"
            )
        return
    trials = [args.trials] * len(seeds)
    if args.seeds_only:
        with ProcessPoolExecutor(args.jobs) as pool:
            by_seed = list(pool.map(seed_loo, seeds, trials))
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "seeds.json", by_seed)
        print_seeds(by_seed)
        return
    with ProcessPoolExecutor(args.jobs) as pool:
        starts = None if args.no_starts else pool.submit(shared_starts)  # the longest job
        pending = pool.map(seed_loo, seeds, trials)
        leaks = list(pool.map(leak, folds))
        by_seed = list(pending)
        free_starts = None if starts is None else starts.result()
    free = curves()
    with_mean = curves(run_mean=means["validity"], cycles=cycles)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(
        args.out / "variants.json",
        {
            "seeds": by_seed,
            "leak": leaks,
            "shared_starts": free_starts,
            "delta": DELTA,
            "curves": [
                {"curve": a[0], "loo_rmse": a[1], "with_run_mean": b[1], "residuals": list(b[2])}
                for a, b in zip(free, with_mean)
            ],
        },
    )
    print_seeds(by_seed)
    print(f"\n| left out | predicted, mean as if ∓{DELTA} | leak |\n|---|---|---|")
    for r in leaks:
        lo, hi = r["predicted"][-1], r["predicted"][1]
        print(f"| {r['cycle']} | {lo:.3f} / {hi:.3f} | {r['leak']:+.2f} |")
    print("\n| model-free curve | LOO | LOO with the run mean | residuals with it |")
    print("|---|---|---|---|")
    for a, b in zip(free, with_mean):
        res = ", ".join(f"{x:+.3f}" for x in b[2])
        print(f"| {a[0]} | {a[1]:.3f} | {b[1]:.3f} | {res} |")
    if free_starts is not None:
        held = ", ".join(f"{p:.3f} ({c})" for c, p in free_starts["heldout_validity"].items())
        params = ", ".join(f"{k.split('.')[-1]} {v:.3g}" for k, v in free_starts["params"].items())
        print(
            f"\n{free_starts['variant']}: validity LOO {free_starts['loo_rmse']['validity']:.3f}, "
            f"accuracy LOO {free_starts['loo_rmse']['mean_accuracy']:.3f}; held out {held}; "
            f"fit to all: {params} ({free_starts['seconds']:.0f} s)"
        )
    print(
        f"\nmean RMSE over seeds {seeds}: "
        f"{np.mean([r['loo_rmse']['validity'] for r in by_seed]):.3f}; wrote {args.out}/"
    )


if __name__ == "__main__":
    main()
