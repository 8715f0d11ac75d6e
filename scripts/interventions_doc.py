"""Regenerate docs/interventions.md's table and figure: each intervention and the shipped config
against the constant and cyclic schedules, on fresh seeds the search never saw.

    python scripts/interventions_doc.py [--seeds 5000 5001 5002] [--trials 100]

Prints a Markdown table (means over the seeds, each seed a 100-trial run) and writes
docs/interventions/conditions.png. Copy pareto.png from an `archrefine intervene` run by hand.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from archrefine.core.config import Config, load_config  # noqa: E402
from archrefine.core.store import atomic_write_bytes  # noqa: E402
from archrefine.experiments.intervene import CONDITIONS, GOAL, measure, objectives  # noqa: E402
from archrefine.sim.loop import simulate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[5000, 5001, 5002])
    parser.add_argument("--trials", type=int, default=100)
    args = parser.parse_args()
    best = load_config(ROOT / "configs" / "intervention-best.toml")
    base = Config(trials=args.trials)
    runs = {"constant": (base, {}), "cyclic": (base, {"schedule.kind": "cyclic"})}
    runs |= {name: (base, over) for name, over in CONDITIONS.items()}
    runs["intervention-best.toml"] = (best.with_overrides({"trials": args.trials}), {})
    rows, curves = [], {}
    for seed in args.seeds:
        frames = {
            name: simulate(cfg.with_overrides({**over, "seed": seed})).metrics
            for name, (cfg, over) in runs.items()
        }
        ref = measure(frames["constant"])
        for name, frame in frames.items():
            rows.append({"condition": name, "seed": seed, **objectives(measure(frame), ref)})
            curves.setdefault(name, []).append(
                frame.groupby("cycle")[["diversity", "validity"]].mean()
            )
    table = pd.DataFrame(rows).groupby("condition", sort=False)[list(GOAL)].agg(["mean", "min"])
    print(f"seeds {args.seeds}, {args.trials} trials each; mean (min over seeds)\n")
    print("| condition | diversity kept | validity share | fitness gain | goal met (every seed) |")
    print("|---|---|---|---|---|")
    for name, r in table.iterrows():
        met = all(r[(k, "min")] >= g for k, g in GOAL.items())
        print(f"| {name} | {r[('kept', 'mean')]:.3f} ({r[('kept', 'min')]:.3f}) | "
              f"{r[('validity_share', 'mean')]:.3f} ({r[('validity_share', 'min')]:.3f}) | "
              f"{r[('fitness_gain', 'mean')]:+.4f} ({r[('fitness_gain', 'min')]:+.4f}) | "
              f"{'yes' if met else 'no'} |")  # fmt: skip
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, parts in curves.items():
        mean = sum(parts) / len(parts)
        style = {"lw": 2.5, "color": "k"} if name.endswith(".toml") else {"lw": 1.3}
        axes[0].plot(mean.index, mean.diversity / mean.diversity.iloc[0], label=name, **style)
        axes[1].plot(mean.index, mean.validity, label=name, **style)
    axes[0].axhline(GOAL["kept"], ls="--", color="0.5", lw=1)
    axes[0].set_title("diversity ÷ cycle 1")
    axes[1].set_title("validity")
    for ax in axes:
        ax.set_xlabel("cycle")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    out = ROOT / "docs" / "interventions" / "conditions.png"
    out.parent.mkdir(exist_ok=True)
    atomic_write_bytes(out, buf.getvalue())


if __name__ == "__main__":
    main()
