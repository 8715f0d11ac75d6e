"""The interactive figures of report.html, as plotly figures built from a run's saved frames.

Every figure is drawn from numbers only: no string a model wrote (code, reason, response) ever
goes into a figure, and condition names (from configs) are HTML-escaped, since plotly reads a
few tags in labels.
"""

from __future__ import annotations

import html
import json
import math
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from plotly.colors import qualitative, sample_colorscale

from archrefine.core.metrics import METRICS

if TYPE_CHECKING:
    import plotly.graph_objects as go

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
) -> dict[str, Any]:
    """One panel per metric, one line per condition (column `by`; one line when None): the mean
    over trials per cycle, ±1 std band with several trials. Hovering a cycle lists every
    condition's value; clicking a legend entry toggles that condition in every panel.

    Written as the plotly figure's JSON data (what `make_subplots` and `add_trace` would build,
    without their per-property validation, which cost more than the rest of the report)."""
    frame = frame.assign(_condition="all") if by is None else frame.assign(_condition=frame[by])
    names = [str(c) for c in pd.unique(frame["_condition"])]
    frame = frame.assign(_condition=frame["_condition"].astype(str))
    columns = panels(frame)
    stats = summarise(frame, "_condition", columns)
    rows = math.ceil(len(columns) / 2)
    layout = _grid(rows, [c.replace("_", " ") for c in columns])
    data: list[dict[str, Any]] = []
    bands = len(names) <= MAX_BANDS and frame.groupby("_condition")["trial"].nunique().max() > 1
    for name, color in zip(names, colors(len(names))):
        sel = stats[stats["_condition"] == name]
        label = html.escape(name)
        x = _values(sel.cycle)
        for i, col in enumerate(columns):
            axes = _axes(i + 1)
            mean, std = sel[f"{col}:mean"].to_numpy(float), sel[f"{col}:std"].to_numpy(float)
            if bands and np.isfinite(std).any():
                data += _band(x, mean, std, color, label, axes)
            spread = " ± %{customdata:.3f}" if np.isfinite(std).any() else ""
            data.append(
                {
                    "customdata": _values(std),
                    "hovertemplate": f"{label}: %{{y:.3f}}{spread}<extra>{col}</extra>",
                    "legendgroup": label,
                    "line": {"color": color, "width": 2},
                    "marker": {"size": 5},
                    "mode": "lines+markers",
                    "name": label,
                    "showlegend": i == 0 and by is not None,
                    "x": x,
                    "y": _values(mean),
                    "type": "scatter",
                    **axes,
                }
            )
    if phases:
        layout["shapes"] = _phase_shapes(phases, len(columns))
    cycles = int(frame.cycle.max()) if len(frame) else 1
    for n in range(1, 2 * rows + 1):
        axis = layout[_axis_key("x", n)]
        if cycles <= 25:
            axis["dtick"] = 1
        if n > 2 * rows - 2:  # the bottom row
            axis["title"] = {"text": "cycle"}
        layout[_axis_key("y", n)]["rangemode"] = "tozero"
    layout |= {
        "title": {"text": html.escape(title)},
        "hovermode": "x unified",
        "height": 260 * rows + 120,
        "template": template("plotly_white"),
        "legend": {"title": {"text": html.escape(by or "")}, "groupclick": "togglegroup"},
        "margin": {"l": 50, "r": 20, "t": 80, "b": 40},
    }
    return {"data": data, "layout": layout}


def _axis_key(letter: str, n: int) -> str:
    return f"{letter}axis" if n == 1 else f"{letter}axis{n}"


def _axes(n: int) -> dict[str, str]:
    """A trace's axes in subplot `n` (1-based, row by row)."""
    return {"xaxis": "x" if n == 1 else f"x{n}", "yaxis": "y" if n == 1 else f"y{n}"}


def _grid(rows: int, titles: list[str]) -> dict[str, Any]:
    """The axes and subplot titles `make_subplots(rows, 2, shared_xaxes=True, ...)` lays out:
    spacing 0.08 across, 0.12 / rows + 0.04 down; each column's x axes match its bottom one,
    which alone shows tick labels."""
    h, v = 0.08, 0.12 / rows + 0.04
    width, height = (1 - h) / 2, (1 - v * (rows - 1)) / rows
    layout: dict[str, Any] = {}
    annotations = []
    for r in range(rows):
        top = 1 - r * (height + v)
        for c in range(2):
            n = 2 * r + c + 1
            left = c * (width + h)
            x = {"anchor": _axes(n)["yaxis"], "domain": [left, left + width]}
            if r < rows - 1:
                x |= {"matches": f"x{2 * (rows - 1) + c + 1}", "showticklabels": False}
            layout[_axis_key("x", n)] = x
            y_domain = [max(top - height, 0.0), top]
            layout[_axis_key("y", n)] = {"anchor": _axes(n)["xaxis"], "domain": y_domain}
            if n <= len(titles):
                annotations.append(
                    {"font": {"size": 16}, "showarrow": False, "text": titles[n - 1],
                     "x": left + width / 2, "xanchor": "center", "xref": "paper",
                     "y": top, "yanchor": "bottom", "yref": "paper"}
                )  # fmt: skip
    layout["annotations"] = annotations
    return layout


def _band(x: list, mean, std, color: str, label: str, axes: dict[str, str]) -> list[dict]:
    """A ±1 std band under a line, in its legend group (so it toggles with it)."""
    fill = {"fill": "tonexty", "fillcolor": _rgba(color, 0.15)}
    common = {"hoverinfo": "skip", "legendgroup": label, "line": {"width": 0}, "mode": "lines",
              "showlegend": False, "x": x, "type": "scatter", **axes}  # fmt: skip
    return [{**common, "y": _values(mean + std)}, {**common, **fill, "y": _values(mean - std)}]


def _rgba(color: str, alpha: float) -> str:
    if color.startswith("#"):
        r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    else:  # "rgb(r, g, b)" from a sampled colour scale
        r, g, b = (int(float(v)) for v in color[color.index("(") + 1 : -1].split(",")[:3])
    return f"rgba({r},{g},{b},{alpha})"


def _phase_shapes(phases: dict, panels: int) -> list[dict[str, Any]]:
    """The detected phase boundaries as dashed lines in every panel, their 90% intervals
    shaded; a value that is not a finite number (a phases.json edited or damaged) is left out."""
    bounds, lows, highs = (finite_list(phases.get(k)) for k in ("boundaries", "low", "high"))
    shapes = []
    for j, b in enumerate(bounds):
        if b is None:
            continue
        refs = [(_axes(n)["xaxis"], _axes(n)["yaxis"] + " domain") for n in range(1, panels + 1)]
        low, high = (lows[j] if j < len(lows) else None), (highs[j] if j < len(highs) else None)
        if low is not None and high is not None and high > low:
            shapes += [{"fillcolor": "#e76f51", "line": {"width": 0}, "opacity": 0.12,
                        "type": "rect", "x0": low, "x1": high, "xref": xr, "y0": 0,
                        "y1": 1, "yref": yr} for xr, yr in refs]  # fmt: skip
        shapes += [{"line": {"color": "#e76f51", "dash": "dash", "width": 1.5}, "type": "line",
                    "x0": b, "x1": b, "xref": xr, "y0": 0, "y1": 1, "yref": yr}
                   for xr, yr in refs]  # fmt: skip
    return shapes


def finite_list(values: Any) -> list[float | None]:
    """A phases.json list as floats, None for an entry that is not a finite number (null)."""
    if not isinstance(values, list):
        return []
    finite = [isinstance(v, (int, float)) and not isinstance(v, bool) for v in values]
    return [float(v) if ok and math.isfinite(v) else None for v, ok in zip(values, finite)]


def to_json(fig: dict[str, Any] | go.Figure) -> str:
    """A figure's JSON (its data already, or a plotly Figure), escaped as plotly escapes it:
    no `</script>` can appear inside."""
    if not isinstance(fig, dict):  # a loop's candidates
        import plotly.io as pio

        return pio.to_json(fig, validate=False)
    spec = json.dumps(fig, separators=(",", ":"), allow_nan=False)
    for unsafe, safe in (("<", "\\u003c"), (">", "\\u003e"), ("/", "\\u002f")):
        spec = spec.replace(unsafe, safe)
    return spec


def _values(values) -> list:
    """A column as JSON values, once: floats (NaN as null, which plotly leaves a gap for)."""
    array = np.asarray(values, dtype=float)
    return [None if not math.isfinite(v) else (int(v) if v.is_integer() else v)
            for v in array.tolist()]  # fmt: skip


def template(name: str) -> dict[str, Any]:
    """A plotly template's JSON, read from plotly's own package data (as plotly reads it)."""
    if name not in _TEMPLATES:
        path = resources.files("plotly").joinpath("package_data", "templates", f"{name}.json")
        _TEMPLATES[name] = json.loads(path.read_text())
    return _TEMPLATES[name]


_TEMPLATES: dict[str, dict[str, Any]] = {}


def candidates(cands: pd.DataFrame) -> go.Figure:
    """Every evaluated candidate as a point (accuracy and novelty against cycle), one legend
    entry per status, selected candidates as stars. Each point carries its candidate id, so a
    click opens the candidate in the table below (report.js)."""
    import plotly.graph_objects as go  # a loop's report only: plotly's validators cost ~0.3 s
    from plotly.subplots import make_subplots

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
