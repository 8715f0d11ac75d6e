"""The interactive figures of report.html, as plotly figures built from a run's saved frames.

Every figure is drawn from numbers only: no string a model wrote (code, reason, response) ever
goes into a figure, and condition names (from configs) are HTML-escaped, since plotly reads a
few tags in labels.
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale
from plotly.subplots import make_subplots

from archrefine.core.metrics import METRICS

EXTRAS = ("best_fitness", "mutation_rate", "loss")
"""Panels drawn after the four metrics when the frame has finite values for them."""
MAX_BANDS = 6
"""±1 std bands are drawn for at most this many conditions; beyond, they hide the lines."""
STATUS_COLORS = {"ok": "#2a9d8f", "duplicate": "#8d99ae", "pending": "#adb5bd"}


def colors(n: int) -> list[str]:
    """Distinct colours for a few conditions, an ordered scale for many (a top-k grid)."""
    if n <= len(qualitative.Plotly):
        return list(qualitative.Plotly[:n])
    return sample_colorscale("Viridis", [i / max(n - 1, 1) for i in range(n)])


def panels(frame: pd.DataFrame) -> list[str]:
    """The metric columns worth a panel: the four metrics, then extras with finite values."""
    extra = [c for c in EXTRAS if c in frame.columns and np.isfinite(frame[c].astype(float)).any()]
    return [m for m in METRICS if m in frame.columns] + extra


def summarise(frame: pd.DataFrame, by: str, columns: list[str]) -> pd.DataFrame:
    """Per (condition, cycle): the mean, std and count over trials of each column."""
    numeric = frame[[by, "cycle", *columns]].copy()
    numeric[columns] = numeric[columns].astype(float)
    grouped = numeric.groupby([by, "cycle"], sort=False)[columns]
    out = grouped.agg(["mean", "std", "count"])
    out.columns = [f"{c}:{stat}" for c, stat in out.columns]
    return out.reset_index()


def trajectory(
    frame: pd.DataFrame,
    *,
    by: str | None = None,
    title: str,
    phases: dict | None = None,
) -> go.Figure:
    """One panel per metric, one line per condition (column `by`; one line when None): the mean
    over trials per cycle, ±1 std band with several trials. Hovering a cycle lists every
    condition's value; clicking a legend entry toggles that condition in every panel."""
    frame = frame.assign(_condition="all") if by is None else frame.assign(_condition=frame[by])
    names = [str(c) for c in pd.unique(frame["_condition"])]
    frame = frame.assign(_condition=frame["_condition"].astype(str))
    columns = panels(frame)
    stats = summarise(frame, "_condition", columns)
    rows = math.ceil(len(columns) / 2)
    fig = make_subplots(
        rows=rows,
        cols=2,
        shared_xaxes=True,
        subplot_titles=[c.replace("_", " ") for c in columns],
        vertical_spacing=0.12 / rows + 0.04,
        horizontal_spacing=0.08,
    )
    bands = len(names) <= MAX_BANDS and frame.groupby("_condition")["trial"].nunique().max() > 1
    for name, color in zip(names, colors(len(names))):
        sel = stats[stats["_condition"] == name]
        label = html.escape(name)
        for i, col in enumerate(columns):
            row, column = i // 2 + 1, i % 2 + 1
            mean, std = sel[f"{col}:mean"], sel[f"{col}:std"]
            if bands and np.isfinite(std).any():
                _band(fig, sel.cycle, mean, std, color, label, row, column)
            spread = " ± %{customdata:.3f}" if np.isfinite(std).any() else ""
            fig.add_trace(
                go.Scatter(
                    x=sel.cycle,
                    y=mean,
                    customdata=std,
                    mode="lines+markers",
                    marker={"size": 5},
                    line={"color": color, "width": 2},
                    name=label,
                    legendgroup=label,
                    showlegend=i == 0 and by is not None,
                    hovertemplate=f"{label}: %{{y:.3f}}{spread}<extra>{col}</extra>",
                ),
                row=row,
                col=column,
            )
    if phases:
        _mark_phases(fig, phases)
    cycles = int(frame.cycle.max()) if len(frame) else 1
    fig.update_xaxes(dtick=1 if cycles <= 25 else None)
    fig.update_xaxes(title_text="cycle", row=rows)
    fig.update_yaxes(rangemode="tozero")
    fig.update_layout(
        title={"text": html.escape(title)},
        hovermode="x unified",
        height=260 * rows + 120,
        template="plotly_white",
        legend={"title": {"text": html.escape(by or "")}, "groupclick": "togglegroup"},
        margin={"l": 50, "r": 20, "t": 80, "b": 40},
    )
    return fig


def _band(fig, x, mean, std, color: str, label: str, row: int, col: int) -> None:
    """A ±1 std band under a line, in its legend group (so it toggles with it)."""
    fill = _rgba(color, 0.15)
    for y, extra in ((mean + std, {}), (mean - std, {"fill": "tonexty", "fillcolor": fill})):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
                legendgroup=label,
                **extra,
            ),  # fmt: skip
            row=row,
            col=col,
        )


def _rgba(color: str, alpha: float) -> str:
    if color.startswith("#"):
        r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    else:  # "rgb(r, g, b)" from a sampled colour scale
        r, g, b = (int(float(v)) for v in color[color.index("(") + 1 : -1].split(",")[:3])
    return f"rgba({r},{g},{b},{alpha})"


def _mark_phases(fig: go.Figure, phases: dict) -> None:
    """The detected phase boundaries as dashed lines, their 90% intervals shaded."""
    bounds = phases.get("boundaries") or []
    lows, highs = phases.get("low") or [], phases.get("high") or []
    for j, b in enumerate(bounds):
        if j < len(lows) and j < len(highs) and highs[j] > lows[j]:
            fig.add_vrect(x0=lows[j], x1=highs[j], fillcolor="#e76f51", opacity=0.12,
                          line_width=0, row="all", col="all")  # fmt: skip
        fig.add_vline(x=b, line={"color": "#e76f51", "dash": "dash", "width": 1.5},
                      row="all", col="all")  # fmt: skip


def candidates(cands: pd.DataFrame) -> go.Figure:
    """Every evaluated candidate as a point (accuracy and novelty against cycle), one legend
    entry per status, selected candidates as stars. Each point carries its candidate id, so a
    click opens the candidate in the table below (report.js)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["accuracy", "novelty"],
                        horizontal_spacing=0.08)  # fmt: skip
    statuses = list(pd.unique(cands.status))
    palette = dict(zip(statuses, qualitative.D3))
    palette.update({s: c for s, c in STATUS_COLORS.items() if s in palette})
    rank = cands.groupby("cycle").cumcount()
    size = cands.groupby("cycle")["id"].transform("count")
    x = cands.cycle + 0.6 * ((rank + 0.5) / size - 0.5)  # spread each cycle's candidates
    for status in statuses:
        mask = (cands.status == status).to_numpy()
        sel = cands[mask]
        for col, metric in enumerate(("accuracy", "novelty"), start=1):
            y = sel[metric].astype(float)
            if not np.isfinite(y).any():
                continue
            fig.add_trace(
                go.Scatter(
                    x=x[mask],
                    y=y,
                    mode="markers",
                    name=html.escape(status),
                    legendgroup=status,
                    showlegend=status not in _shown(fig),
                    marker={
                        "color": palette[status],
                        "size": np.where(sel.selected, 11, 7),
                        "symbol": np.where(sel.selected, "star", "circle"),
                        "line": {"width": 0.5, "color": "#333"},
                    },
                    customdata=np.stack([sel.id, sel.cycle], axis=1),
                    hovertemplate=(
                        f"#%{{customdata[0]}} cycle %{{customdata[1]}} {status}: "
                        f"{metric} %{{y:.3f}}<extra></extra>"
                    ),
                ),  # fmt: skip
                row=1,
                col=col,
            )
    cycles = int(cands.cycle.max()) if len(cands) else 1
    fig.update_xaxes(title_text="cycle", dtick=1 if cycles <= 25 else None)
    fig.update_yaxes(rangemode="tozero")
    fig.update_layout(
        title={"text": "Candidates (★ selected; click a point to open it)"},
        hovermode="closest",
        height=380,
        template="plotly_white",
        margin={"l": 50, "r": 20, "t": 80, "b": 40},
    )
    return fig


def _shown(fig: go.Figure) -> set[str]:
    return {t.legendgroup for t in fig.data if t.showlegend}
