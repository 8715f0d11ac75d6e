"""report.html: one self-contained page per run directory, to open offline, mail or attach.

Everything is inlined (plotly's bundled JS, the CSS, a small vanilla-JS table), so the page
loads nothing from the network; a Content-Security-Policy forbids it to, and lets only this
page's own scripts (by hash) run. Text a model wrote (candidate code, reason, reply) reaches the
page only inside a JSON block with `<`, `>` and `&` escaped, and is shown with `textContent`:
a candidate that writes `</script><script>…` in its code shows exactly that, as text.

>>> from archrefine.report.html import write
>>> write(Path("runs/reproduce-20260101-000000"))  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import pandas as pd
from plotly.offline import get_plotlyjs

from archrefine.core.metrics import METRICS
from archrefine.core.store import atomic_write_text
from archrefine.experiments.claims import Claim
from archrefine.experiments.reproduce import fmt, summary
from archrefine.report import figures
from archrefine.report.source import ReportError, RunData, candidate_records, load

__all__ = ["FILE", "ReportError", "build", "write", "write_safely"]

FILE = "report.html"
TITLES = {"run": "Run", "reproduce": "Reproduction of the paper's experiments", "sweep": "Sweep",
          "loop": "Real loop", "sweep-point": "Sweep point"}  # fmt: skip
EXPERIMENTS = {"trajectory": "Trajectory (baseline)", "topk": "Top-k selection",
               "schedules": "Mutation schedules", "comparison": "Generators compared"}  # fmt: skip
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def write(directory: Path, out: Path | None = None) -> Path:
    """Build the report of `directory` and write it atomically (to `directory/report.html`
    unless `out` is given); return its path. ReportError (one line) when a file is unreadable."""
    path = Path(out) if out is not None else Path(directory) / FILE
    atomic_write_text(path, build(directory))
    return path


def write_safely(directory: Path) -> str | None:
    """`write` for the end of a run: a failure is one line (`problem`; None on success), never
    an exception, so a report can never make a finished run fail."""
    try:
        write(directory)
    except Exception as err:  # noqa: BLE001  (the run's results are written; never fail it)
        return problem(err)
    return None


def problem(err: Exception) -> str:  # the one line a finished run warns with
    return " ".join(str(err).split())[:300] or type(err).__name__


def build(directory: Path, info: dict[str, Any] | None = None) -> str:
    """The page's HTML for one directory (`info`: its run.json, where about to be written)."""
    data = load(Path(directory), info)
    sections = [_overview(data), *_trajectories(data), _phases(data), _claims(data)]
    if data.kind == "sweep":
        sections.append(_sweep_table(data))
    if data.candidates is not None:
        sections.append(_candidates(data))
    body = "\n".join(s for s in sections if s)
    return _page(data, body)


# ---- page --------------------------------------------------------------------------------------


def _asset(name: str) -> str:
    return resources.files("archrefine.report").joinpath("assets", name).read_text()


def _digest(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"


def _page(data: RunData, body: str) -> str:
    """The page around `body`: inlined CSS and scripts, and a policy that lets only the scripts
    written here run (their hashes) and loads nothing from anywhere."""
    scripts = [get_plotlyjs(), *_inline_scripts(body), _asset("report.js")]
    policy = (
        "default-src 'none'; img-src data: blob:; style-src 'unsafe-inline'; "
        f"script-src {' '.join(_digest(s) for s in dict.fromkeys(scripts))}; base-uri 'none'; "
        "form-action 'none'"
    )
    title = f"{TITLES[data.kind]}: {data.directory.resolve().name}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{html.escape(policy)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="archrefine {_version()}">
<title>{html.escape(title)}</title>
<style>{_asset("report.css")}</style>
<script>{scripts[0]}</script>
</head>
<body>
<header><h1>{html.escape(title)}</h1>{_nav(body)}</header>
{body}
<footer>Written by archrefine {_version()} on {_now()} from the files in
<code>{html.escape(str(data.directory))}</code>; rebuild it with
<code>archrefine report {html.escape(str(data.directory))}</code>.</footer>
<script>{scripts[-1]}</script>
</body>
</html>
"""


def _inline_scripts(body: str) -> list[str]:
    """The executable inline scripts in `body` (each plot's), for the policy's hashes."""
    found, start = [], 0
    while (i := body.find("<script>", start)) >= 0:
        j = body.index("</script>", i)
        found.append(body[i + len("<script>") : j])
        start = j
    return found


def _nav(body: str) -> str:
    links = [(a, t) for a, t in (("overview", "Overview"), ("trajectory", "Trajectory"),
             ("phases", "Phases"), ("claims", "Claims"), ("points", "Points"),
             ("candidates", "Candidates")) if f'id="sec-{a}"' in body]  # fmt: skip
    return "<nav>" + "".join(f'<a href="#sec-{a}">{t}</a>' for a, t in links) + "</nav>"


def _version() -> str:
    try:
        return metadata.version("archrefine")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _e(value: Any) -> str:
    return html.escape(str(value))


def _figure(fig, div_id: str, *, opens_candidates: bool = False) -> str:
    """A plotly figure (or its JSON data) as a div and the one script that draws it, its JSON
    escaped as plotly escapes it."""
    attr = " data-opens-candidates" if opens_candidates else ""
    spec = figures.to_json(fig)
    script = (
        f"(function(){{var f={spec};"
        f'Plotly.newPlot("{div_id}",f.data,f.layout,{json.dumps(PLOT_CONFIG)});}})();'
    )
    return f'<div id="{div_id}" class="plot"{attr}></div>\n<script>{script}</script>'


# ---- sections ----------------------------------------------------------------------------------


def _overview(data: RunData) -> str:
    info = data.info
    facts: list[tuple[str, Any]] = [("directory", data.directory), ("kind", data.kind)]
    status = info.get("status")
    if status is not None:
        note = "" if status == "complete" else " (not finished: the page shows what was written)"
        facts.append(("status", f"{status}{note}"))
    for key in ("started", "finished", "seconds", "command", "seed", "trials", "isolation",
                "backend", "point"):  # fmt: skip
        if info.get(key) is not None:
            facts.append((key, info[key]))
    frame = data.metrics
    facts.append(("cycles", int(frame.cycle.max()) if len(frame) else 0))
    if data.kind in ("run", "reproduce", "sweep-point") and "trial" in frame.columns:
        facts.append(("trials per condition", int(frame.trial.nunique())))
    if data.candidates is not None:
        counts = data.candidates.status.value_counts()
        facts.append(("candidates", f"{len(data.candidates)} ("
                      + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")"))  # fmt: skip
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    config = ""
    if data.config is not None:
        config = (
            "<details><summary>config.toml (the resolved configuration)</summary>"
            f"<pre>{_e(data.config)}</pre></details>"
        )
    return (
        f'<section id="sec-overview"><h2>Overview</h2><dl class="facts">{rows}</dl>{config}'
        "</section>"
    )


def _trajectories(data: RunData) -> list[str]:
    """The trajectory figures: one per experiment (reproduce), per point (sweep), or one."""
    frame = data.metrics
    intro = (
        '<p class="note">Mean over trials per cycle (±1 std shaded when there are several '
        "trials and few conditions). Hover a cycle for every condition's value; click a legend "
        "entry to hide or show a condition, double-click to show it alone.</p>"
    )
    phases = data.phases if data.kind in ("reproduce", "loop") else None
    out = [f'<section id="sec-trajectory"><h2>Trajectory</h2>{intro}']
    if data.kind == "reproduce":
        for n, (experiment, sel) in enumerate(frame.groupby("experiment", sort=False)):
            name = EXPERIMENTS.get(str(experiment), str(experiment))
            fig = figures.trajectory(
                sel, by="condition", title=name,
                phases=phases if experiment == "trajectory" else None,
            )  # fmt: skip
            out.append(f"<h3>{_e(name)}</h3>" + _figure(fig, f"plot-{n}"))
    elif data.kind == "sweep":
        fig = figures.trajectory(frame, by="point", title="Every point of the sweep")
        out.append(_figure(fig, "plot-0"))
    else:
        title = f"{TITLES[data.kind]} trajectory"
        out.append(_figure(figures.trajectory(frame, title=title, phases=phases), "plot-0"))
    if phases and phases.get("boundaries"):
        out.append(
            '<p class="note">Dashed lines: detected phase boundaries; shaded: their 90% '
            "bootstrap intervals (see Phases).</p>"
        )
    if data.candidates is not None and len(data.candidates):
        fig = figures.candidates(data.candidates)
        out.append(
            "<h3>Each candidate</h3>" + _figure(fig, "plot-candidates", opens_candidates=True)
        )
    out.append("</section>")
    return ["\n".join(out)]


def _num(x: Any) -> str:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return f"{x:g}" if isinstance(x, float) and math.isfinite(x) else str(x)
    return _e(fmt(x))  # None (a value that was not a finite number) as a dash


def _interval(points: list, lows: list, highs: list) -> str:
    if not points:
        return "none"
    cells = []
    for j, b in enumerate(points):
        ci = f" (90% {_num(lows[j])}–{_num(highs[j])})" if j < len(lows) and j < len(highs) else ""
        cells.append(f"{_num(b)}{ci}")
    return ", ".join(cells)


def _phases(data: RunData) -> str:
    p = data.phases
    if p is None:
        return ""
    r2 = figures.finite_list(p.get("r2"))  # null (no fit with that many kinks) keeps its place
    gains = [None if a is None or b is None else b - a for a, b in zip(r2, r2[1:])]
    rows = "".join(
        f"<tr><td class='num'>{k}</td><td class='num'>{_num4(v)}</td>"
        f"<td class='num'>{'' if k == 0 else _num4(gains[k - 1], '+')}</td></tr>"
        for k, v in enumerate(r2)
    )
    table = (
        "<table class='sortable compact'><thead><tr><th class='num'>kinks</th>"
        "<th class='num'>R²</th>"
        f"<th class='num'>gain over one kink fewer</th></tr></thead><tbody>{rows}</tbody></table>"
        if rows
        else ""
    )
    best = _interval(*(p.get(f"three_phase_{k}") or [] for k in ("fit", "low", "high")))
    return f"""<section id="sec-phases"><h2>Phases</h2>
<p class="note">Phase boundaries are the cycles where a continuous piecewise-linear fit to the
standardised validity and novelty curves kinks; a further kink counts when it adds at least
{_num(p.get("min_gain", "–"))} to R². Intervals: 90% bootstrap over trials.</p>
<dl class="facts"><dt>detected boundaries</dt>
<dd>{_interval(p.get("boundaries") or [], p.get("low") or [], p.get("high") or [])}</dd>
<dt>best two-kink fit</dt><dd>{best}</dd></dl>
{table}</section>"""


def _num4(x: float | None, sign: str = "") -> str:
    return "–" if x is None else f"{x:{sign}.4f}"


def _claims(data: RunData) -> str:
    if data.claims is None:
        if data.kind in ("run", "sweep", "sweep-point"):
            return (
                '<section id="sec-claims"><h2>Claims</h2><p class="note">A '
                f"{_e(data.kind)} directory has no claims check: <code>archrefine reproduce"
                "</code> measures the paper's claims.</p></section>"
            )
        return ""
    if not data.claims:
        return (
            '<section id="sec-claims"><h2>Claims</h2><p class="note">claims.json is empty: too '
            "few cycles to check the claims.</p></section>"
        )
    rows = []
    for rec in data.claims:
        c = _claim(rec)
        verdict = {True: ("yes", "yes"), False: ("no", "no"), None: ("not measured", "")}
        word, css = verdict.get(c.holds, ("?", ""))
        conf = c.confidence if isinstance(c.confidence, (int, float)) else None
        bar = (
            f"<span class='bar' style='width:{40 * conf:.0f}px'></span>{conf:.2f}"
            if conf is not None
            else "–"
        )
        rows.append(
            f"<tr><td>{_e(c.id)}</td><td>{_e(c.claim)}</td><td>{_e(fmt(c.paper))}</td>"
            f"<td>{_e(summary(c))}</td><td>{_e(c.tolerance)}</td>"
            f"<td class='{css}' data-value='{_e(word)}'>{_e(word)}</td>"
            f"<td class='num' data-value='{'' if conf is None else conf}'>{bar}</td></tr>"
        )
    held = sum(r.get("holds") is True for r in data.claims)
    measured = sum(r.get("holds") is not None for r in data.claims)
    return f"""<section id="sec-claims"><h2>Claims</h2>
<p>{held} of {measured} measured claims hold. <span class="note">Confidence: the share of
bootstrap resamples of the trials in which the claim holds (– with one trial); every number
measured is in claims.json.</span></p>
<table class="sortable" id="claims"><thead><tr><th>id</th><th>claim</th><th>paper</th>
<th>measured</th><th>tolerance</th><th>holds</th><th class="num">confidence</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table></section>"""


def _claim(rec: dict[str, Any]) -> Claim:
    """A claims.json record as a Claim (missing fields blank), to word it as claims.md does."""
    return Claim(
        id=str(rec.get("id")),
        claim=str(rec.get("claim", "")),
        paper=rec.get("paper"),
        measured=rec.get("measured"),
        tolerance=str(rec.get("tolerance", "")),
        holds=rec.get("holds") if isinstance(rec.get("holds"), bool) else None,
        confidence=rec.get("confidence"),
    )


def _sweep_table(data: RunData) -> str:
    """Per point: its settings and the final cycle's means, sortable."""
    frame = data.metrics
    columns = list(frame.columns)
    keys = columns[1 : columns.index("trial")] if "trial" in columns else []  # the overrides
    head = "".join(f"<th>{_e(k)}</th>" for k in ["point", *keys])
    head += "".join(f"<th class='num'>{_e(m)}</th>" for m in METRICS)
    rows = []
    for name, sel in frame.groupby("point", sort=False):
        last = sel[sel.cycle == sel.cycle.max()]
        cells = [f"<td>{_e(name)}</td>"] + [f"<td>{_e(sel[k].iloc[0])}</td>" for k in keys]
        for m in METRICS:
            v = float(pd.to_numeric(last[m], errors="coerce").mean())
            value, shown = (v, f"{v:.3f}") if math.isfinite(v) else ("", "–")
            cells.append(f"<td class='num' data-value='{value}'>{shown}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"""<section id="sec-points"><h2>Points</h2>
<p class="note">The final cycle's means over trials; click a header to sort.</p>
<table class="sortable" id="points"><thead><tr>{head}</tr></thead>
<tbody>{"".join(rows)}</tbody></table></section>"""


def _json_block(records: list[dict[str, Any]]) -> str:
    """JSON that no text inside can break out of: ASCII only, `<`, `>`, `&` as \\u escapes."""
    text = json.dumps(records, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _candidates(data: RunData) -> str:
    cands = data.candidates
    assert cands is not None
    records = candidate_records(cands)
    heads = [("id", True), ("cycle", True), ("status", False), ("accuracy", True),
             ("novelty", True), ("parameters", True), ("selected", False),
             ("parents", False)]  # fmt: skip
    head = "".join(f"<th{' class=num' if n else ''}>{h}</th>" for h, n in heads)
    return f"""<section id="sec-candidates"><h2>Candidates</h2>
<p class="note">Every candidate the loop produced (prompts are left out: <code>archrefine export
</code> has them). Click a header to sort, a row to open its code, reason and lineage.</p>
<div class="filters">
<label>status <select id="f-status"><option value="">all</option></select></label>
<label>cycle <select id="f-cycle"><option value="">all</option></select></label>
<label><input type="checkbox" id="f-selected"> selected only</label>
<label>text in code or reason <input type="search" id="f-text" size="24"></label>
<span id="f-count" class="muted"></span></div>
<div class="explorer"><div class="table-box">
<table class="sortable" id="candidates"><thead><tr>{head}</tr></thead><tbody></tbody></table>
</div>
<aside id="candidate-detail" hidden><h3 id="d-title"></h3><dl class="facts" id="d-facts"></dl>
<h3>Lineage</h3><div id="d-lineage"></div>
<h3>Reason</h3><pre class="wrap" id="d-reason"></pre>
<h3>Code</h3><pre id="d-code"></pre>
<div id="d-response-box" hidden><h3>Reply (no code found)</h3><pre class="wrap"
id="d-response"></pre></div></aside></div>
<script type="application/json" id="candidates-data">{_json_block(records)}</script>
</section>"""
