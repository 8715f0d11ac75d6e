"""Figures, drawn from the long-format results alone (so `archrefine plot DIR` can redraw them)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from archrefine.core.analysis import Phases, derivative, peak_time  # noqa: E402
from archrefine.core.metrics import METRICS  # noqa: E402
from archrefine.core.store import atomic_write_bytes  # noqa: E402
from archrefine.experiments.claims import (  # noqa: E402
    SCHEDULE_KINDS,
    TOPK,
    balance,
    curves,
    retained,
    selection,
)

COLORS = {
    "validity": "tab:green",
    "novelty": "tab:purple",
    "diversity": "tab:blue",
    "fitness": "tab:orange",
}
SCHEDULE_COLORS = dict(zip(SCHEDULE_KINDS, ("tab:gray", "tab:blue", "tab:orange", "tab:red")))
PHASE_NAMES = ("exploration", "transition", "specialization")
PHASE_COLORS = ("#f2f2f2", "#e0ecf8", "#fbe9e7")


def save_figure(fig: plt.Figure, path: Path, dpi: int = 130, tight: bool = True) -> None:
    """Write `fig` as a PNG atomically (a reader never sees half an image) and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def cycle_axis(ax: plt.Axes) -> None:
    """Label a cycle axis, with ticks at whole cycles only (matplotlib would put a 5-cycle
    loop's ticks at 1.5, 2.5, …, cycles that do not exist)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("cycle")


def _named(bounds: list[float] | None, named: bool | None) -> bool:
    """Whether to shade and name three phases: when C1 held (`named`), or, when its verdict is
    not known, when exactly two boundaries were detected."""
    return bool(bounds) and len(bounds) == 2 and (named is None or named)


def _shade_phases(
    ax: plt.Axes,
    bounds: list[float] | None,
    cycles: int,
    label: bool = False,
    named: bool | None = None,
) -> None:
    """Shade and name three phases when C1 found them; otherwise mark each detected boundary
    with a plain line and no phase names."""
    if not bounds:
        return
    if not _named(bounds, named):
        for i, b in enumerate(bounds):
            ax.axvline(
                b, color="0.35", ls="--", lw=1, label="detected boundary" if i == 0 else None
            )
        return
    edges = [0.5, *bounds, cycles + 0.5]
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        ax.axvspan(a, b, color=PHASE_COLORS[i], zorder=0)
        if label:
            ax.text((a + b) / 2, 1.02, PHASE_NAMES[i], transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=8, color="0.3")  # fmt: skip


def _change_note(values: pd.Series) -> str:
    """First → last value, in percent too unless the curve starts near 0 (where a percentage
    says nothing)."""
    values = values.dropna()  # e.g. fitness in cycles where nothing was valid
    if values.empty:
        return "no value in any cycle"
    first, last = float(values.iloc[0]), float(values.iloc[-1])
    if not np.isfinite(first * last):
        return ""
    text = f"{first:.2f} → {last:.2f}"
    if first != 0 and abs(first) >= 0.1 * max(abs(first), abs(last)):
        text += f" ({last / first - 1:+.0%})"
    return text


def trajectory(
    sel: pd.DataFrame,
    path: Path,
    *,
    found: Phases | None = None,
    title: str = "Evolution over refinement cycles",
    named: bool | None = None,
) -> None:
    """Fig. 1: the four metrics per cycle, mean ± std over trials, every axis from 0 with the
    change since cycle 1 written on it; three phases shaded and named only when C1 found them
    (`named`; unknown: two boundaries detected), else the detected boundaries as plain lines."""
    g = sel.groupby("cycle")[list(METRICS)]
    mean, std = g.mean(), g.std().fillna(0.0)
    cycles = mean.index.to_numpy()
    fig, axes = plt.subplots(1, 4, figsize=(12.2, 4.2), sharex=True)
    # fixed margins that hold the titles: one draw (bbox_inches="tight" measures, then redraws)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.12, top=0.78, wspace=0.22)
    trials = sel.trial.nunique()
    for ax, key in zip(axes, METRICS):
        bounds = found.boundaries if found else None
        _shade_phases(ax, bounds, int(cycles.max()), label=True, named=named)
        # one run has no spread: no band, and no "mean ± std" legend entries for it
        ax.plot(cycles, mean[key], color=COLORS[key], lw=2, label="mean" if trials > 1 else None)
        if trials > 1:
            ax.fill_between(cycles, mean[key] - std[key], mean[key] + std[key], color=COLORS[key],
                            alpha=0.2, lw=0, label="± std")  # fmt: skip
        upper = (mean[key] + std[key]).to_numpy(dtype=float)
        top = float(np.nanmax(upper)) if np.isfinite(upper).any() else 1.0
        ax.set_ylim(0, max(top, 1e-9) * 1.12)
        ax.set_title(f"{key}  {_change_note(mean[key])}", pad=16, fontsize=10)
        cycle_axis(ax)
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[1]:
        axes[0].legend(fontsize=7, loc="lower right")
    spread = "one run" if trials == 1 else f"mean ± std over {trials} trials"
    first, last = (f"{x:g}" for x in (cycles[0], cycles[-1])) if len(cycles) else ("", "")
    fig.suptitle(f"{title} ({spread}; axes from 0; change from cycle {first} to {last})", y=0.97)
    save_figure(fig, path, tight=False)


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
    with np.errstate(invalid="ignore", divide="ignore"):  # a tiny run with no valid candidate
        v_share = v / v.max()
    axes[1].plot(ks, v_share, "o-", color=COLORS["validity"], label="validity / best")
    axes[1].plot(ks, kept, "o-", color=COLORS["diversity"], label="diversity kept")
    axes[1].plot(ks, score, "s-", color="black", lw=2, label="balance (harmonic mean)")
    c6 = selection(frame)
    lo, hi = c6.measured["best_k_ci90"]
    axes[1].axvspan(lo * 0.97, hi * 1.03, color="black", alpha=0.1, lw=0,
                    label=f"90% interval of best k: [{lo}, {hi}]")  # fmt: skip
    best = c6.measured["best_k"]
    axes[1].axvline(best, color="black", ls=":", lw=1, label=f"best k = {best}")
    for ax, title in zip(axes, ("final-cycle metrics", "balance")):
        ax.set_xscale("log")
        ticks = [k for k in ks if k in (1, 2, 3, 5, 10, 15, 20, 30, 50)]
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.minorticks_off()
        ax.set_xlabel("top-k")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Selection pressure", y=1.02)
    save_figure(fig, path)


def phases(sel: pd.DataFrame, found: Phases, path: Path, *, named: bool | None = None) -> None:
    """Fig. 3: Savitzky–Golay derivatives, the steepest validity rise and novelty fall (C7),
    the detected boundaries with their 90% intervals, and the phases when C1 found them."""
    mean = sel.groupby("cycle")[["validity", "novelty", "diversity"]].mean()
    cycles = mean.index.to_numpy()
    first = float(cycles[0]) if len(cycles) else 1.0
    fig, ax = plt.subplots(figsize=(9, 4.4))
    handles = []
    if _named(found.boundaries, named):
        _shade_phases(ax, found.boundaries, int(cycles.max()), label=True, named=named)
        handles += [
            Patch(color=c, label=f"{n} (detected)") for c, n in zip(PHASE_COLORS, PHASE_NAMES)
        ]
    for key in mean.columns:
        (line,) = ax.plot(cycles, derivative(mean[key].to_numpy()), marker=".", color=COLORS[key],
                          label=f"d {key} / d cycle")  # fmt: skip
        handles.append(line)
    for key, sign, word in (("validity", 1, "steepest rise"), ("novelty", -1, "steepest fall")):
        t = float(peak_time(mean[key].to_numpy(), sign=sign, first=first))
        y = float(np.interp(t, cycles, derivative(mean[key].to_numpy())))
        handles.append(ax.scatter([t], [y], s=70, marker="v" if sign < 0 else "^", zorder=5,
                                  color=COLORS[key], edgecolor="black",
                                  label=f"{key} {word}: cycle {t:.1f}"))  # fmt: skip
    for b, lo, hi in zip(found.boundaries, found.low, found.high):
        ax.axvline(b, color="black", ls="--", lw=1)
        if hi > lo:
            ax.axvspan(lo, hi, color="black", alpha=0.08, lw=0)
    if found.boundaries:
        handles.append(Line2D([], [], color="black", ls="--", lw=1, label="detected boundary"))
        handles.append(Patch(color="black", alpha=0.08, label="its 90% bootstrap interval"))
    ax.axhline(0, color="0.5", lw=0.8)
    cycle_axis(ax)
    ax.set_ylabel("rate of change per cycle")
    bounds = ", ".join(
        f"{b:g} [{lo:g}, {hi:g}]" for b, lo, hi in zip(found.boundaries, found.low, found.high)
    )
    ax.set_title(f"Phase transitions: boundaries {bounds or 'none found'}", pad=16, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0),
              frameon=False)  # fmt: skip
    save_figure(fig, path)


def schedules(frame: pd.DataFrame, path: Path, *, period: int = 4) -> None:
    """Fig. 4: mutation rate, diversity and validity per cycle under each schedule, axes from 0;
    the last `period` cycles, over which C4 averages, shaded."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    last = None
    for kind in SCHEDULE_KINDS:
        c = curves(frame, "schedules", kind)
        if c.empty:
            continue
        color = SCHEDULE_COLORS[kind]
        last = c.index
        axes[0].plot(c.index, c.mutation_rate, marker=".", color=color, label=kind)
        kept = c.diversity / c.diversity.iloc[0]
        tail = float(kept.iloc[-period:].mean())
        axes[1].plot(c.index, kept, color=color, lw=2,
                     label=f"{kind}: {retained(c):.0%} at the end, {tail:.0%} over the last "
                     f"{min(period, len(c))}")  # fmt: skip
        axes[2].plot(c.index, c.validity, color=color, lw=2, label=kind)
    titles = ("mutation rate", "diversity ÷ cycle 1 (axis from 0)", "validity (axis from 0)")
    for ax, title in zip(axes, titles):
        if last is not None and len(last) > 1:
            ax.axvspan(last[-min(period, len(last))] - 0.5, last[-1] + 0.5, color="0.9",
                       zorder=0, label=f"last {min(period, len(last))} cycles (C4)")  # fmt: skip
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        cycle_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")  # validity rises from 0: a fixed corner covers it
    fig.suptitle("Mutation schedules", y=1.02)
    save_figure(fig, path)


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
        cycle_axis(ax)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Generators compared (mean ± std over trials)", y=1.04)
    save_figure(fig, path)


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
        cycle_axis(ax)
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
    save_figure(fig, path)
