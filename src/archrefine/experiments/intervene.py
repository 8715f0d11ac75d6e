"""`archrefine intervene`: search the interventions' settings with Optuna; report a Pareto front.

Three objectives, all maximized and all measured against the constant schedule run on the same
seeds (common random numbers): **diversity kept** (final ÷ first-cycle diversity of the per-cycle
means, as C3–C5 measure it), **validity share** (peak validity ÷ the constant schedule's peak) and
**fitness gain** (final-cycle best fitness minus the constant schedule's). The search runs on
`seeds` consecutive seeds from `search_seed` (each objective the mean over them); the front it
finds is then re-measured on as many seeds from `report_seed`, seeds the search never saw, and
only those fresh numbers are reported, so the front's selection bias does not inflate them. The
goal of issue 15 is kept ≥ 0.98, validity share ≥ 0.99, fitness gain ≥ 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from archrefine.core.config import Config, ConfigError
from archrefine.core.store import (
    atomic_write_text,
    write_json,
    write_parquet,
)
from archrefine.sim.loop import simulate

OBJECTIVES = ("kept", "validity_share", "fitness_gain")
GOAL = {"kept": 0.98, "validity_share": 0.99, "fitness_gain": 0.0}
REFERENCE = {"schedule.kind": "constant"}  # what the shares and gains are measured against
FILES = ("pareto.json", "trials.parquet", "pareto.png", "best.toml")

CONDITIONS: dict[str, dict[str, Any]] = {
    "novelty": {"intervention.selection": "novelty", "intervention.novelty_weight": 1.0},
    "map-elites": {"intervention.qd": "map-elites"},
    "islands": {"intervention.islands": 4},
    "temperature": {
        "schedule.kind": "cyclic",
        "intervention.mutation": "temperature",
        "intervention.temperature_span": 0.5,
    },
    "replay": {"intervention.replay": 0.5},
    "accumulate": {"intervention.accumulate": True},
    "elitism": {"intervention.elite_share": 0.04, "intervention.elite_rate": 0.1},
}
"""One setting of each intervention: the conditions reproduce's schedules experiment adds."""


def has_ribs() -> bool:
    """Whether pyribs (the `interventions` extra) is installed: MAP-Elites needs it."""
    import importlib.util

    return importlib.util.find_spec("ribs") is not None


def conditions(generator: str = "paper") -> dict[str, dict[str, Any]]:
    """`CONDITIONS` less MAP-Elites where pyribs is missing (reproduce then runs the others and
    says why in interventions.json), and less accumulate for a generator other than the paper
    model's (the learned one already fine-tunes on every earlier selection)."""
    return {
        k: v
        for k, v in CONDITIONS.items()
        if (k != "map-elites" or has_ribs()) and (k != "accumulate" or generator == "paper")
    }


def measure(frame: pd.DataFrame) -> dict[str, float]:
    """Diversity kept, peak validity and final best fitness of one run's metrics."""
    mean = frame.groupby("cycle")[["diversity", "validity", "best_fitness"]].mean()
    return {
        "kept": float(mean.diversity.iloc[-1] / mean.diversity.iloc[0]),
        "peak_validity": float(mean.validity.max()),
        "best_fitness": float(mean.best_fitness.iloc[-1]),
    }


def objectives(run: dict[str, float], ref: dict[str, float]) -> dict[str, float]:
    """`run`'s three objectives against the reference (constant schedule) `ref`; NaN where the
    reference never wrote a valid candidate (tiny runs), rather than a ZeroDivisionError."""
    peak = ref["peak_validity"]
    return {
        "kept": run["kept"],
        "validity_share": run["peak_validity"] / peak if peak > 0 else float("nan"),
        "fitness_gain": run["best_fitness"] - ref["best_fitness"],
    }


def meets_goal(obj: dict[str, float]) -> bool:
    return all(obj[k] >= GOAL[k] for k in OBJECTIVES)


def suggest(trial, population: int = 50) -> dict[str, Any]:
    """One point of the search space as dotted overrides (conditional: islands need qd off;
    replay and accumulate are alternatives; λ and the elite rate on log scales)."""
    over: dict[str, Any] = {
        "schedule.kind": trial.suggest_categorical("schedule", ["constant", "cyclic"])
    }
    if trial.suggest_categorical("selection", ["top-k", "novelty"]) == "novelty":
        over |= {"intervention.selection": "novelty"}
        weight = trial.suggest_float("novelty_weight", 0.03, 30.0, log=True)
        over |= {"intervention.novelty_weight": weight}
    qd = ["off", "map-elites"] if has_ribs() else ["off"]
    if trial.suggest_categorical("qd", qd) == "map-elites":
        over |= {"intervention.qd": "map-elites"}
        over |= {"intervention.qd_cells": trial.suggest_int("qd_cells", 2, 12)}
    else:
        islands = trial.suggest_int("islands", 1, 5)
        over |= {"intervention.islands": islands}
        if islands > 1:
            over |= {"intervention.migration_interval": trial.suggest_int("migration", 1, 8)}
            over |= {"intervention.migrants": trial.suggest_int("migrants", 0, 2)}
    if trial.suggest_categorical("mutation", ["schedule", "temperature"]) == "temperature":
        over |= {"intervention.mutation": "temperature"}
        over |= {"intervention.temperature_span": trial.suggest_float("temp_span", 0.0, 2.0)}
    data = trial.suggest_categorical("fine_tune", ["selection", "replay", "accumulate"])
    if data == "replay":
        over |= {"intervention.replay": trial.suggest_float("replay", 0.05, 0.8)}
    if data == "accumulate":
        over |= {"intervention.accumulate": True}
    if data != "selection":
        over |= {"intervention.replay_window": trial.suggest_int("replay_window", 0, 10)}
    elites = trial.suggest_int("elites", 0, min(5, population // 4))
    if elites:
        over |= {"intervention.elite_share": elites / population}
        over |= {"intervention.elite_rate": trial.suggest_float("elite_rate", 0.02, 0.5, log=True)}
    return over


@dataclass
class Search:
    """What `search` found: every trial, the front (search seed) and its fresh measurements."""

    trials: pd.DataFrame
    front: list[dict[str, Any]]
    reference: dict[str, dict[str, float]]
    best: dict[str, Any] | None
    meta: dict[str, Any] = field(default_factory=dict)


def _run(config: Config, over: dict[str, Any], seed: int) -> dict[str, float]:
    return measure(simulate(config.with_overrides({**over, "seed": seed})).metrics)


def _objectives(
    config: Config, over: dict[str, Any], refs: dict[int, dict[str, float]]
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The objectives on each seed of `refs` (seed → the constant schedule's run), and their
    mean over the seeds."""
    each = [objectives(_run(config, over, seed), ref) for seed, ref in refs.items()]
    return {k: float(np.mean([e[k] for e in each])) for k in OBJECTIVES}, each


def search(
    config: Config,
    budget: int,
    *,
    search_seed: int = 1000,
    report_seed: int = 5000,
    sampler_seed: int = 0,
    seeds: int = 1,
    on_trial: Callable[[int], None] | None = None,
) -> Search:
    """Run `budget` Optuna trials (NSGA-II, seeded) on `seeds` seeds from `search_seed`;
    re-measure the front on `seeds` seeds from `report_seed`. No I/O."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "intervene needs Optuna: pip install 'archrefine[interventions]'"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searched = range(search_seed, search_seed + seeds)
    reported = range(report_seed, report_seed + seeds)
    if set(searched) & set(reported):
        raise ValueError("the search and report seeds must differ: the front is re-measured")
    ref_search = {s: _run(config, REFERENCE, s) for s in searched}
    rows: list[dict[str, Any]] = []

    def objective(trial) -> tuple[float, ...]:
        over = suggest(trial, config.loop.population)
        obj, _ = _objectives(config, over, ref_search)
        rows.append({"trial": trial.number, **obj, "overrides": over})
        if on_trial is not None:
            on_trial(trial.number + 1)
        return tuple(obj[k] for k in OBJECTIVES)

    sampler = optuna.samplers.NSGAIISampler(seed=sampler_seed)
    study = optuna.create_study(directions=["maximize"] * len(OBJECTIVES), sampler=sampler)
    study.optimize(objective, n_trials=budget)
    ref_report = {s: _run(config, REFERENCE, s) for s in reported}
    by_number = {r["trial"]: r for r in rows}
    front = []
    for t in sorted(study.best_trials, key=lambda t: t.number):
        row = by_number[t.number]
        fresh, each = _objectives(config, row["overrides"], ref_report)
        search_obj = {k: row[k] for k in OBJECTIVES}
        front.append(
            {
                "trial": t.number,
                "overrides": row["overrides"],
                "search": search_obj,
                "fresh": fresh,
                "fresh_per_seed": each,
                "goal_met_fresh": meets_goal(fresh),
                "goal_met_every_fresh_seed": all(meets_goal(e) for e in each),
            }  # fmt: skip
        )
    table = pd.DataFrame(
        [
            {**{k: v for k, v in r.items() if k != "overrides"}, **_flat(r["overrides"])}
            for r in rows
        ]  # fmt: skip
    )
    table["on_front"] = table.trial.isin([f["trial"] for f in front])
    meta = {"budget": budget, "search_seed": search_seed, "report_seed": report_seed,
            "seeds": seeds, "sampler": "NSGAIISampler", "sampler_seed": sampler_seed,
            "trials": config.trials, "goal": GOAL}  # fmt: skip
    reference = {"search": list(ref_search.values()), "report": list(ref_report.values())}
    return Search(table, front, reference, choose(front), meta)


def choose(front: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The front member to ship, chosen on the *search* numbers only: among those meeting the
    validity and fitness goals, the one keeping most diversity; if none, the one closest to the
    goal (smallest summed shortfall)."""
    if not front:
        return None

    def shortfall(f: dict[str, Any]) -> float:
        s = f["search"]
        return sum(max(GOAL[k] - s[k], 0.0) for k in OBJECTIVES)

    ok = [f for f in front if all(f["search"][k] >= GOAL[k] for k in OBJECTIVES[1:])]
    if ok:
        return max(ok, key=lambda f: f["search"]["kept"])
    return min(front, key=shortfall)


def summary_lines(result: Search) -> list[str]:
    """What the command prints: the front's fresh numbers, and the member shipped."""
    m = result.meta

    def span(first: int) -> str:
        return f"seed {first}" if m["seeds"] == 1 else f"seeds {first}-{first + m['seeds'] - 1}"

    lines = [f"Pareto front: {len(result.front)} of {len(result.trials)} trials (search "
             f"{span(m['search_seed'])}); re-measured on fresh {span(m['report_seed'])} "
             "(means):"]  # fmt: skip
    for f in result.front:
        x = f["fresh"]
        mark = "  goal met" if f["goal_met_fresh"] else ""
        lines.append(
            f"  trial {f['trial']}: kept {x['kept']:.3f}, validity share "
            f"{x['validity_share']:.3f}, fitness gain {x['fitness_gain']:+.4f}{mark}"
        )
    if result.best is not None:
        lines.append(f"best.toml: trial {result.best['trial']} (chosen on the search seed)")
    return lines


def dominated(points: np.ndarray) -> np.ndarray:
    """Which rows of `points (n, m)` (maximized) some other row dominates."""
    ge = (points[None, :, :] >= points[:, None, :]).all(axis=2)
    gt = (points[None, :, :] > points[:, None, :]).any(axis=2)
    return (ge & gt).any(axis=1)


def _flat(over: dict[str, Any]) -> dict[str, Any]:
    return {f"set.{k}": v for k, v in over.items()}


def write(out: Path, config: Config, result: Search) -> list[str]:
    """pareto.json, trials.parquet, best.toml (the chosen config), pareto.png; returns names."""
    write_parquet(out / "trials.parquet", result.trials)
    best = result.best
    write_json(
        out / "pareto.json",
        {
            **result.meta,
            "objectives": list(OBJECTIVES),
            "reference": result.reference,
            "front": result.front,
            "best": best,
        },  # fmt: skip
    )
    if best is not None:
        chosen = config.with_overrides(best["overrides"])
        atomic_write_text(out / "best.toml", chosen.to_toml())
    draw(result, out / "pareto.png")
    return list(FILES if best is not None else [f for f in FILES if f != "best.toml"])


def draw(result: Search, path: Path) -> None:
    """Every trial's diversity kept against validity share (search seed), coloured by fitness
    gain; the front ringed, its fresh re-measurements as crosses; the goal as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = result.trials
    plural = "s" if int(result.meta.get("seeds", 1)) > 1 else ""
    search, fresh_label = f"search seed{plural}", f"fresh seed{plural}"
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    sc = ax.scatter(t.validity_share, t.kept, c=t.fitness_gain, cmap="coolwarm_r", s=18,
                    vmin=-abs(t.fitness_gain).max(), vmax=abs(t.fitness_gain).max())  # fmt: skip
    fig.colorbar(sc, ax=ax, label=f"best-fitness gain vs constant ({search})")
    on = t[t.on_front]
    ax.scatter(on.validity_share, on.kept, s=70, facecolors="none", edgecolors="k",
               label=f"Pareto front ({search})")  # fmt: skip
    fresh = [f["fresh"] for f in result.front]
    if fresh:
        ax.scatter([f["validity_share"] for f in fresh], [f["kept"] for f in fresh], marker="x",
                   color="tab:green", label=f"front re-measured ({fresh_label})")  # fmt: skip
    ax.axhline(GOAL["kept"], ls="--", color="0.4", lw=1)
    ax.axvline(GOAL["validity_share"], ls="--", color="0.4", lw=1, label="goal")
    ax.set_xlabel("peak validity ÷ constant schedule's")
    ax.set_ylabel("diversity kept (final ÷ cycle 1)")
    ax.set_title(f"archrefine intervene: {len(t)} trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    from archrefine.experiments.plots import save_figure

    save_figure(fig, path, dpi=120, tight=False)


def conditions_table(frame: pd.DataFrame, generator: str = "paper") -> dict[str, Any]:
    """Each schedules-experiment condition's objectives against its constant schedule (what
    reproduce writes to interventions.json)."""
    sel = frame[frame.experiment == "schedules"]
    ref = measure(sel[sel.condition == "constant"])
    table: dict[str, Any] = {
        cond: {**measure(part), **objectives(measure(part), ref)}
        for cond, part in sel.groupby("condition", sort=False)
    }
    if not has_ribs():
        table["map-elites"] = (
            "not run: pyribs is not installed (pip install 'archrefine[interventions]')"
        )
    if generator != "paper":
        table["accumulate"] = f"not run: the {generator} generator fine-tunes on all earlier data"
    return table
