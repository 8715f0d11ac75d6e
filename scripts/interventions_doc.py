"""Regenerate docs/interventions.md's table and figure: each intervention and the shipped config
against the constant and cyclic schedules, on fresh seeds the search never saw.

    python scripts/interventions_doc.py [--seeds 5000 5001 5002 5003 5004] [--trials 100]

Prints a Markdown table (mean ± standard deviation over the seeds, and the minimum, each seed a
100-trial run; shares and gains against the constant schedule on the same seed) and writes
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
ABLATIONS = [
    ("elitism", "intervention.elite_share", 0.0),
    ("accumulate", "intervention.accumulate", False),
    ("novelty selection", "intervention.selection", "top-k"),
    ("islands", "intervention.islands", 1),
    ("temperature mutation", "intervention.mutation", "schedule"),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[5000, 5001, 5002, 5003, 5004])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--front", type=Path, help="an intervene directory: print its summary")
    args = parser.parse_args()
    if args.front is not None:
        front_summary(args.front)
        return
    best = load_config(ROOT / "configs" / "intervention-best.toml")
    base = Config(trials=args.trials)
    runs = {"constant": (base, {}), "cyclic": (base, {"schedule.kind": "cyclic"})}
    runs |= {name: (base, over) for name, over in CONDITIONS.items()}
    runs["intervention-best.toml"] = (best.with_overrides({"trials": args.trials}), {})
    for name, key, off in ABLATIONS:  # the shipped setting less one lever at a time
        if best.intervention.model_dump()[key.split(".")[1]] != off:
            runs[f"… without {name}"] = (best.with_overrides({"trials": args.trials, key: off}), {})
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
    frame = pd.DataFrame(rows)
    table = frame.groupby("condition", sort=False)[list(GOAL)].agg(["mean", "std", "min"])
    print(f"seeds {args.seeds}, {args.trials} trials each; mean ± sd (min) over seeds\n")
    print("| condition | diversity kept | validity share | fitness gain | goal met (seeds) |")
    print("|---|---|---|---|---|")
    for name, r in table.iterrows():
        part = frame[frame.condition == name]
        met = sum(all(row[k] >= g for k, g in GOAL.items()) for _, row in part.iterrows())
        cells = [f"{r[(k, 'mean')]:{f}} ± {r[(k, 'std')]:.4f} ({r[(k, 'min')]:{f}})"
                 for k, f in (("kept", ".4f"), ("validity_share", ".3f"),
                              ("fitness_gain", "+.4f"))]  # fmt: skip
        print(f"| {name} | {' | '.join(cells)} | {met}/{len(part)} |")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, parts in curves.items():
        mean = sum(parts) / len(parts)
        if name.startswith("…"):
            continue  # the ablations are in the table only
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


def front_summary(out: Path) -> None:
    """What docs/interventions.md says about an `archrefine intervene` run, from its files."""
    import json

    import numpy as np
    from scipy.stats import spearmanr

    meta = json.loads((out / "pareto.json").read_text())
    trials = pd.read_parquet(out / "trials.parquet")
    front = meta["front"]
    diff = {k: [abs(f["search"][k] - f["fresh"][k]) for f in front] for k in GOAL}
    spread = ", ".join(f"{k} {np.median(v):.3f} ({max(v):.3f})" for k, v in diff.items())
    print(
        f"{len(trials)} trials, {len(front)} on the front; |search - fresh| median (max): {spread}"
    )
    rho = spearmanr(trials.kept, trials.fitness_gain).statistic
    print(f"Spearman rho(kept, fitness gain) over trials: {rho:.2f}")
    ok = trials[(trials.validity_share >= 0.99) & (trials.fitness_gain >= 0)]
    print(
        f"most kept at validity share >= 0.99 and gain >= 0 (search): {ok.kept.max():.4f} "
        f"(trial {int(ok.loc[ok.kept.idxmax(), 'trial'])}); most kept at all: "
        f"{trials.kept.max():.4f}; goal met on the search seeds: {int((ok.kept >= 0.98).sum())}"
    )
    for col, label in (("set.intervention.accumulate", "accumulate"),
                       ("set.intervention.replay", "replay"),
                       ("set.intervention.elite_share", "elitism"),
                       ("set.intervention.qd", "map-elites")):  # fmt: skip
        on = trials[col].notna() if col in trials else pd.Series(False, index=trials.index)
        print(
            f"{label}: {int(on.sum())} trials, mean kept {trials.kept[on].mean():.3f} "
            f"(others {trials.kept[~on].mean():.3f}), mean gain "
            f"{trials.fitness_gain[on].mean():+.4f} (others {trials.fitness_gain[~on].mean():+.4f})"
        )


if __name__ == "__main__":
    main()
