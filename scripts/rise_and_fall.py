"""Draw docs/rise-and-fall.md's figure and print its tables from two or three calibrations.

    archrefine calibrate src/archrefine/data/khalid2026.csv --generator paper \
        --columns validity,mean_accuracy --loo --out runs/rf-paper
    archrefine calibrate src/archrefine/data/khalid2026.csv --generator drift \
        --columns validity,mean_accuracy --loo --out runs/rf-drift
    python scripts/drift_loo.py --out runs/drift-loo
    archrefine calibrate src/archrefine/data/khalid2026.csv --generator drift-set \
        --params generator.base_logit,generator.bonus_max,generator.bonus_rate,generator.drift \
        --columns validity,mean_accuracy --run-means --loo --out runs/rf-drift-set4-mean
    python scripts/rise_and_fall.py runs/rf-paper runs/rf-drift \
        --variants runs/drift-loo/variants.json --set-mean runs/rf-drift-set4-mean

Reads each directory's params.json, fitted.csv, residuals.csv and loo.csv (nothing is
simulated here) and writes docs/figures/rise-and-fall.png: observed values, each model's fitted
curve, and each model's leave-one-cycle-out predictions of the values it did not see.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
FIGURE = ROOT / "docs" / "figures" / "rise-and-fall.png"
COLUMNS = ("validity", "mean_accuracy")
#: the other drift fits' held-out marks: none of the fits' colours (grey, red, blue)
MARKS = ("tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def load(directory: Path) -> dict:
    try:
        params = json.loads((directory / "params.json").read_text())
        loo = pd.read_csv(directory / "loo.csv")
    except (OSError, ValueError) as err:
        sys.exit(f"error: {directory}: not a calibration run with --loo ({err})")
    return {
        "params": params,
        "fitted": pd.read_csv(directory / "fitted.csv"),
        "residuals": pd.read_csv(directory / "residuals.csv"),
        "loo": loo,
    }


def num(value: float | None, spec: str) -> str:
    """`value` formatted; "–" for null (strict JSON's non-finite number: an RMSE or a
    standard error the fit could not measure)."""
    return "–" if value is None else format(value, spec)


def tables(runs: dict[str, dict]) -> str:
    lines = ["| model | column | RMSE (fit) | leave-one-out RMSE | held-out predictions |"]
    lines.append("|---|---|---|---|---|")
    for name, run in runs.items():
        for col in COLUMNS:
            loo = run["loo"][run["loo"]["column"] == col]
            preds = ", ".join(f"{p:.3f} ({c})" for c, p in zip(loo["cycle"], loo["predicted"]))
            lines.append(
                f"| {name} | {col} | {num(run['params']['rmse'][col], '.3f')} | "
                f"{num(run['params']['loo_rmse'][col], '.3f')} | {preds} |"
            )
    lines.append("")
    lines.append("| model | parameter | fitted | ± s.e. |")
    lines.append("|---|---|---|---|")
    for name, run in runs.items():
        for key, value in run["params"]["params"].items():
            se = num(run["params"]["stderr"][key], ".2g")
            lines.append(f"| {name} | `{key}` | {value:.4g} | {se} |")
    for name, run in runs.items():
        v = run["fitted"].set_index("cycle")["validity"]
        lines.append(f"\n{name} fitted validity by cycle: " + ", ".join(f"{x:.3f}" for x in v))
        lines.append(f"{name} mean fitted validity over all cycles: {v.mean():.3f}")
    return "\n".join(lines)


def baselines(run: dict) -> str:
    """Leave-one-out RMSE of validity for two model-free predictors of a left-out cycle: the
    mean of the other cycles, and a straight line in log-odds through them."""
    obs = run["residuals"][run["residuals"]["column"] == "validity"]
    c, v = obs["cycle"].to_numpy(float), obs["observed"].to_numpy(float)
    logit = np.log(v / (1 - v))
    out = []
    for name, predict in (
        ("mean of the other cycles", lambda m, i: v[m].mean()),
        (
            "line in log-odds",
            lambda m, i: 1 / (1 + np.exp(-np.polyval(np.polyfit(c[m], logit[m], 1), c[i]))),
        ),
    ):
        res = [v[i] - predict(np.arange(len(v)) != i, i) for i in range(len(v))]
        each = ", ".join(f"{r:+.3f} ({int(x)})" for r, x in zip(res, c))
        out.append(f"| {name} | {np.sqrt(np.mean(np.square(res))):.3f} | {each} |")
    return "\n".join(
        ["| validity predictor | leave-one-out RMSE | residuals |", "|---|---|---|", *out]
    )


def figure(runs: dict[str, dict], path: Path, variants: list[dict] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from archrefine.core.store import atomic_write_bytes

    colors = dict(zip(runs, ("tab:grey", "tab:red", "tab:blue")))
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.6 if variants else 4.4))
    for ax, col in zip(axes, COLUMNS):
        obs = next(iter(runs.values()))["residuals"]
        obs = obs[obs["column"] == col]
        for name, run in runs.items():
            rmse, loo = run["params"]["rmse"][col], run["params"]["loo_rmse"][col]
            ax.plot(
                run["fitted"]["cycle"],
                run["fitted"][col],
                color=colors[name],
                label=f"{name} fit (RMSE {rmse:.3f}, LOO {loo:.3f})",
            )
            held = run["loo"][run["loo"]["column"] == col]
            ax.plot(held["cycle"], held["predicted"], "x", color=colors[name], ms=8)
        for i, var in enumerate((variants or []) if col == "validity" else []):
            held = var["heldout_validity"]  # scripts/drift_loo.py: other drift fits, held out
            x = np.array([int(c) for c in held]) + 0.25 * (i + 1)
            ax.plot(x, list(held.values()), "+", ms=6, color=MARKS[i % len(MARKS)],
                    label=f"{var['variant']} (LOO "
                    f"{num(var['loo_rmse']['validity'], '.3f')})")  # fmt: skip
        ax.plot(obs["cycle"], obs["observed"], "o", color="black", label="Khalid et al. 2026")
        for run in runs.values():  # the published mean over every cycle, where a fit used it
            means = run["residuals"][run["residuals"]["column"] == col + "_run_mean"]
            for value in means["observed"].iloc[:1]:
                ax.axhline(value, color="black", ls=":", lw=1, label="published mean, 22 cycles")
                break
        ax.set_title(col.replace("_", " "), fontsize=10)
        ax.set_xlabel("cycle (x: predicted with that cycle left out)")
        ax.set_xlim(0.5, 24.0 if variants else 22.5)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paper", type=Path, help="calibration of --generator paper, with --loo")
    parser.add_argument("drift", type=Path, help="calibration of --generator drift, with --loo")
    parser.add_argument("--out", type=Path, default=FIGURE, help="figure path")
    parser.add_argument(
        "--variants", type=Path, help="variants.json of scripts/drift_loo.py, drawn as + marks"
    )
    parser.add_argument(
        "--set-mean", type=Path, help="calibration of drift-set, four free, with --run-means --loo"
    )
    args = parser.parse_args()
    runs = {"paper model": load(args.paper), "with drift": load(args.drift)}
    if args.set_mean:
        runs["set growth + run mean"] = load(args.set_mean)
    variants = json.loads(args.variants.read_text()) if args.variants else None
    figure(runs, args.out, variants)
    print(tables(runs))
    print()
    print(baselines(runs["paper model"]))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
