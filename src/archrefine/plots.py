"""Figures, drawn from the long-format results alone (so `archrefine plot DIR` can redraw them)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from archrefine.analysis import Phases, derivative  # noqa: E402
from archrefine.experiments.claims import (  # noqa: E402
    SCHEDULE_KINDS,
    TOPK,
    balance,
    curves,
    retained,
)
from archrefine.loop import METRICS  # noqa: E402
from archrefine.store import atomic_write_bytes  # noqa: E402

COLORS = {
    "validity": "tab:green",
    "novelty": "tab:purple",
    "diversity": "tab:blue",
    "fitness": "tab:orange",
}
SCHEDULE_COLORS = dict(zip(SCHEDULE_KINDS, ("tab:gray", "tab:blue", "tab:orange", "tab:red")))
PHASE_NAMES = ("exploration", "transition", "specialization")


def _save(fig: plt.Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def _shade_phases(
    ax: plt.Axes, bounds: list[float] | None, cycles: int, label: bool = False
) -> None:
    if not bounds:
        return
    edges = [0.5, *bounds, cycles + 0.5]
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        ax.axvspan(a, b, color=("#f2f2f2", "#e0ecf8", "#fbe9e7")[i % 3], zorder=0)
        if label and len(edges) == 4:
            ax.text(
                (a + b) / 2,
                1.02,
                PHASE_NAMES[i],
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8,
                color="0.3",
            )


def trajectory(
    sel: pd.DataFrame,
    path: Path,
    *,
    found: Phases | None = None,
    title: str = "Evolution over refinement cycles",
) -> None:
    """Fig. 1: the four metrics per cycle, mean ± std over trials, shaded by the best
    three-phase fit (Fig. 3 shows what BIC itself prefers)."""
    g = sel.groupby("cycle")[list(METRICS)]
    mean, std = g.mean(), g.std().fillna(0.0)
    cycles = mean.index.to_numpy()
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4), sharex=True)
    for ax, key in zip(axes, METRICS):
        _shade_phases(ax, found.three_phase_fit if found else None, int(cycles.max()), label=True)
        ax.plot(cycles, mean[key], color=COLORS[key], lw=2)
        ax.fill_between(
            cycles, mean[key] - std[key], mean[key] + std[key], color=COLORS[key], alpha=0.2, lw=0
        )
        ax.set_title(key, pad=14)
        ax.set_xlabel("cycle")
        ax.grid(alpha=0.3)
    trials = sel.trial.nunique()
    spread = "one run" if trials == 1 else f"mean ± std over {trials} trials"
    fig.suptitle(f"{title} ({spread})", y=1.08)
    _save(fig, path)


def topk(frame: pd.DataFrame, path: Path) -> None:
    """Fig. 2: final-cycle metrics and the balance score against selection pressure k."""
    conds = [c for c in (f"k={k}" for k in TOPK) if c in set(frame.condition)]
    ks = np.array([int(c[2:]) for c in conds])
    sel = frame[frame.experiment == "topk"]
    last = sel[sel.cycle == sel.cycle.max()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for key in METRICS:
        stats = [last[last.condition == c][key] for c in conds]
        axes[0].errorbar(
            ks,
            [s.mean() for s in stats],
            yerr=[s.std() for s in stats],
            marker="o",
            capsize=3,
            color=COLORS[key],
            label=key,
        )
    fc = [curves(frame, "topk", c) for c in conds]
    v = np.array([c.validity.iloc[-1] for c in fc])
    kept = np.array([retained(c) for c in fc])
    score = balance(v, kept)
    axes[1].plot(ks, v / v.max(), "o-", color=COLORS["validity"], label="validity / best")
    axes[1].plot(ks, kept, "o-", color=COLORS["diversity"], label="diversity kept")
    axes[1].plot(ks, score, "s-", color="black", lw=2, label="balance (harmonic mean)")
    axes[1].axvline(ks[int(np.argmax(score))], color="black", ls=":", lw=1)
    for ax, title in zip(axes, ("final-cycle metrics", "balance")):
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("top-k")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Selection pressure", y=1.02)
    _save(fig, path)


def phases(sel: pd.DataFrame, found: Phases, path: Path) -> None:
    """Fig. 3: Savitzky–Golay derivatives with the detected boundaries and their intervals."""
    mean = sel.groupby("cycle")[["validity", "novelty", "diversity"]].mean()
    cycles = mean.index.to_numpy()
    fig, ax = plt.subplots(figsize=(8, 4))
    _shade_phases(ax, found.boundaries, int(cycles.max()), label=True)
    for key in mean.columns:
        ax.plot(
            cycles,
            derivative(mean[key].to_numpy()),
            marker=".",
            color=COLORS[key],
            label=f"d {key} / d cycle",
        )
    for b, lo, hi in zip(found.boundaries, found.low, found.high):
        ax.axvline(b, color="black", ls="--", lw=1)
        if hi > lo:
            ax.axvspan(lo, hi, color="black", alpha=0.06, lw=0)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel("cycle")
    ax.set_ylabel("rate of change per cycle")
    bounds = ", ".join(
        f"{b:g} [{lo:g}, {hi:g}]" for b, lo, hi in zip(found.boundaries, found.low, found.high)
    )
    ax.set_title(f"Phase transitions: boundaries {bounds or 'none found'}", pad=16, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def schedules(frame: pd.DataFrame, path: Path) -> None:
    """Fig. 4: mutation rate, diversity and validity per cycle under each schedule."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for kind in SCHEDULE_KINDS:
        c = curves(frame, "schedules", kind)
        if c.empty:
            continue
        color = SCHEDULE_COLORS[kind]
        axes[0].plot(c.index, c.mutation_rate, marker=".", color=color, label=kind)
        axes[1].plot(
            c.index,
            c.diversity / c.diversity.iloc[0],
            color=color,
            lw=2,
            label=f"{kind}: keeps {retained(c):.0%}",
        )
        axes[2].plot(c.index, c.validity, color=color, lw=2, label=kind)
    for ax, title in zip(axes, ("mutation rate", "diversity / first cycle", "validity")):
        ax.set_title(title)
        ax.set_xlabel("cycle")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Mutation schedules", y=1.02)
    _save(fig, path)


def compare(runs: dict[str, pd.DataFrame], path: Path) -> None:
    """Fig. 5: the trajectories of several runs (e.g. the paper and learned generators) overlaid,
    mean ± std over trials."""
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4), sharex=True)
    for (label, sel), color in zip(runs.items(), ("tab:gray", "tab:red", "tab:blue")):
        g = sel.groupby("cycle")[list(METRICS)]
        mean, std = g.mean(), g.std().fillna(0.0)
        for ax, key in zip(axes, METRICS):
            ax.plot(mean.index, mean[key], color=color, lw=2, label=label)
            ax.fill_between(
                mean.index,
                mean[key] - std[key],
                mean[key] + std[key],
                color=color,
                alpha=0.15,
                lw=0,
            )
    for ax, key in zip(axes, METRICS):
        ax.set_title(key)
        ax.set_xlabel("cycle")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Generators compared (mean ± std over trials)", y=1.04)
    _save(fig, path)


def overlay(runs: dict[str, pd.DataFrame], path: Path, *, title: str = "Runs compared") -> None:
    """The per-cycle mean (over trials) of each run, one line per run in each of the four
    panels: sweep points or `archrefine compare`, for any number of runs."""
    n = max(len(runs), 1)
    cmap = plt.get_cmap("tab10" if n <= 10 else "viridis")
    colors = [cmap(i) if n <= 10 else cmap(i / max(n - 1, 1)) for i in range(n)]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4), sharex=True)
    for (label, sel), color in zip(runs.items(), colors):
        mean = sel.groupby("cycle")[list(METRICS)].mean()
        for ax, key in zip(axes, METRICS):
            ax.plot(mean.index, mean[key], color=color, lw=1.8, label=label)
    for ax, key in zip(axes, METRICS):
        ax.set_title(key)
        ax.set_xlabel("cycle")
        ax.grid(alpha=0.3)
    if runs:
        axes[-1].legend(
            loc="upper left",
            bbox_to_anchor=(1.04, 1.0),
            fontsize=7,
            ncol=1 + n // 25,
            frameon=False,
        )
    fig.suptitle(f"{title} (mean over trials per cycle)", y=1.04)
    _save(fig, path)
