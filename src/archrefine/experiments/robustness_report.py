"""The robustness study's results: each claim's scalar, the aggregate verdicts (robustness.json),
the Morris analysis, the Markdown tables and the figure. Pure functions of the stored job records,
so a resumed study reports exactly what an uninterrupted one would."""

from __future__ import annotations

import math
import textwrap
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

ROBUST = 0.9  # issue 10: a claim is robust when it holds on ≥ 90% of seeds and of neighbours


SCALAR_KEYS = {
    "C1": ("count", "boundaries"),
    "C2": ("levels_r", "r", "changes_r"),
    "C3": ("constant_loss", "constant", "loss"),
    "C4": ("kept",),
    "C5": ("kept",),
    "C6": ("best_k",),
    "C7": ("lag",),
}
"""Where each claim's central scalar sits in `measured` (first key found; a list counts its
items, so C1's scalar is the number of boundaries; C7's old shape gives rise − fall)."""


def scalar(cid: str, measured: Any) -> tuple[str, float]:
    """The claim's central measured number and its name; NaN when there is none."""

    def number(v: Any) -> float | None:
        if isinstance(v, bool) or v is None:
            return None
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, list):
            return float(len(v))
        if isinstance(v, dict):
            for k in (*SCALAR_KEYS.get(cid, ()), *v):
                got = number(v[k]) if k in v and not isinstance(v[k], list) else None
                if got is not None:
                    return got
        return None

    if isinstance(measured, dict):
        for key in SCALAR_KEYS.get(cid, ()):
            if key in measured and (got := number(measured[key])) is not None:
                return key, got
        if cid == "C7" and {"validity_rise", "novelty_fall"} <= set(measured):
            return "lag", float(measured["validity_rise"]) - float(measured["novelty_fall"])
    got = number(measured)
    return SCALAR_KEYS.get(cid, ("measured",))[0], math.nan if got is None else got


def aggregate(settings: Any, jobs: list, results: dict[str, dict], info: dict[str, Any]) -> dict:
    """robustness.json from the jobs' stored verdicts (`settings` a robustness.Settings, `jobs`
    its Jobs, `results` their records by name, `info` the study's design); no simulation."""
    by_kind: dict[str, list[dict]] = {"seed": [], "perturb": [], "morris": []}
    for job in jobs:
        by_kind[job.kind].append(results[job.name])
    ids = list(dict.fromkeys(c["id"] for r in by_kind["seed"] for c in r["claims"]))
    claims = []
    for cid in ids:
        per_seed = [{"seed": r["seed"], **_pick(r, cid)} for r in by_kind["seed"] if _pick(r, cid)]
        measured = [p for p in per_seed if p["holds"] is not None]
        held = sum(p["holds"] is True for p in measured)
        hood: dict[str, dict[str, bool | None]] = {
            p: {"-": None, "+": None} for p in info["parameters"]
        }
        for r in by_kind["perturb"]:
            hood[r["param"]][r["direction"]] = _pick(r, cid).get("holds")
        verdicts = [v for d in hood.values() for v in d.values() if v is not None]
        share_s = held / len(measured) if measured else None
        share_n = sum(verdicts) / len(verdicts) if verdicts else None
        scalars = [p["scalar"] for p in measured if p.get("scalar") is not None]
        confs = [p["confidence"] for p in measured if p.get("confidence") is not None]
        claims.append(
            {
                "id": cid,
                "seeds": len(measured),
                "held": held,
                "share_seeds": share_s,
                "neighbourhood": hood,
                "share_neighbourhood": share_n,
                "robust": _robust(share_s, share_n),
                "scalar_name": next((p["scalar_name"] for p in measured), None),
                "scalar_mean": float(np.mean(scalars)) if scalars else None,
                "scalar_sd": float(np.std(scalars, ddof=1)) if len(scalars) > 1 else None,
                "confidence_mean": float(np.mean(confs)) if confs else None,
                "per_seed": per_seed,
            }
        )
    return {
        "claims": claims,
        "sensitivity": sensitivity(settings, info, by_kind["morris"], ids),
        "seeds": [r["seed"] for r in by_kind["seed"]],
        "trials": settings.trials,
        "perturb": settings.perturb,
        "robust_threshold": ROBUST,
        "parameters": info["parameters"],
        "settings": asdict(settings),
    }


def _robust(share_seeds: float | None, share_hood: float | None) -> bool | None:
    """Issue 10's bar: ≥ 90% of seeds and of the neighbourhood. None: not measured, or the
    seeds pass but no neighbourhood was run (`--perturb 0`), so it cannot be judged."""
    if share_seeds is None:
        return None
    if share_seeds < ROBUST or (share_hood is not None and share_hood < ROBUST):
        return False
    return None if share_hood is None else True


def _verdict(robust: bool | None, perturb: float) -> str:
    if robust is None:
        return "seeds only" if perturb == 0 else "not measured"
    return "yes" if robust else "**no**"


def _pick(record: dict, cid: str) -> dict:
    for c in record["claims"]:
        if c["id"] == cid:
            keep = ("holds", "confidence", "scalar", "scalar_name")
            return {k: c.get(k) for k in keep}
    return {}


def sensitivity(settings: Any, info: dict, morris: list[dict], ids: list[str]) -> dict[str, Any]:
    """SALib's Morris indices of each claim's central scalar over the ±FRAC box.

    `morris` holds the design's job records in design order. An output missing at any point is
    skipped with the reason; one that never changes has μ* = 0 for every parameter."""
    if settings.perturb == 0:
        return {"skipped": "--perturb 0: no box around the parameters"}
    problem = info["problem"]
    if problem["num_vars"] == 0 or not morris:
        return {"skipped": "no parameter can move by the given fraction"}
    from SALib.analyze import morris as analyze

    x = np.asarray(info["morris_x"], dtype=float)
    seed = int(morris[0]["seed"]) % 2**32
    outputs: dict[str, Any] = {}
    for cid in ids:
        picked = [next((c for c in r["claims"] if c["id"] == cid), {}) for r in morris]
        held = [c.get("holds") for c in picked if c.get("holds") is not None]
        y = np.array([np.nan if c.get("scalar") is None else c["scalar"] for c in picked])
        entry: dict[str, Any] = {
            "scalar": next((c.get("scalar_name") for c in picked if c), None),
            "held_share": sum(held) / len(held) if held else None,
        }
        if np.isnan(y).any():
            entry["skipped"] = "the claim has no scalar at some design points"
        else:
            res = analyze.analyze(problem, x, y, num_levels=settings.levels, seed=seed)
            entry["indices"] = {
                name: {k: _num(res[k][i]) for k in ("mu", "mu_star", "sigma", "mu_star_conf")}
                for i, name in enumerate(problem["names"])
            }
        outputs[cid] = entry
    return {
        "method": "morris (SALib)",
        "trajectories": settings.trajectories,
        "levels": settings.levels,
        "trials": settings.sensitivity_trials,
        "points": len(morris),
        "seed": int(morris[0]["seed"]),
        "bounds": dict(zip(problem["names"], problem["bounds"])),
        "outputs": outputs,
    }


def _num(v: Any) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def _share(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


def _where(hood: dict[str, dict[str, bool | None]]) -> str:
    """Where a claim fails in the neighbourhood, or, when it fails at most points, where it
    holds (the shorter list)."""
    cells = [(f"{_short(p)}{d}", v) for p, dd in hood.items() for d, v in dd.items()]
    fail = [name for name, v in cells if v is False]
    hold = [name for name, v in cells if v is True]
    if len(fail) > len(hold):
        return "all but: " + ", ".join(hold) if hold else "everywhere"
    return ", ".join(fail) or "–"


def _short(param: str) -> str:
    return param.split(".", 1)[1]


def markdown(summary: dict[str, Any]) -> str:
    """The study as Markdown: verdicts per claim, the neighbourhood, the Morris ranking."""
    s = summary["settings"]
    params = summary["parameters"]
    lines = [
        "# Robustness of the claims",
        "",
        f"{len(summary['seeds'])} seeds × {summary['trials']} trials; "
        + (
            f"each free parameter moved by ±{summary['perturb']:g} one at a time"
            if summary["perturb"] > 0
            else "seeds only (--perturb 0)"
        )
        + f"; robust = holds on ≥ {summary['robust_threshold']:.0%} of seeds and of the "
        "neighbourhood; confidence = mean over seeds of the share of bootstrap resamples of "
        "the trials in which the claim holds.",
        "",
        "| claim | held / seeds | share of seeds | confidence | share of neighbourhood | robust "
        "| scalar (mean ± sd over seeds) | fails at |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in summary["claims"]:
        fails = _where(c["neighbourhood"])
        sd = f" ± {c['scalar_sd']:.3g}" if c["scalar_sd"] is not None else ""
        mean = "–" if c["scalar_mean"] is None else f"{c['scalar_mean']:.3g}{sd}"
        lines.append(
            f"| {c['id']} | {c['held']}/{c['seeds']} | {_share(c['share_seeds'])} | "
            f"{_share(c['confidence_mean'])} | {_share(c['share_neighbourhood'])} | "
            f"{_verdict(c['robust'], summary['perturb'])} | "
            f"{c['scalar_name']}: {mean} | {fails} |"
        )
    if summary["perturb"] > 0:
        lines += [
            "",
            "## Neighbourhood",
            "",
            "| parameter | base | − value | claims failing | + value | claims failing |",
            "|---|---|---|---|---|---|",
        ]
        for p, row in params.items():
            cells = []
            for d in ("-", "+"):
                if row[d] is None:
                    cells += [f"({row.get('note' + d, 'not moved')})", ""]
                    continue
                bad = [c["id"] for c in summary["claims"] if c["neighbourhood"][p][d] is False]
                cells += [f"{row[d]:g}", ", ".join(bad) or "none"]
            lines.append(f"| `{p}` | {row['value']:g} | " + " | ".join(cells) + " |")
    sens = summary["sensitivity"]
    lines += ["", "## Global sensitivity (Morris)", ""]
    if "skipped" in sens:
        lines.append(f"Not run: {sens['skipped']}.")
    else:
        names = list(sens["bounds"])
        lines += [
            f"{sens['points']} design points ({sens['trajectories']} trajectories × "
            f"{len(names) + 1}, {sens['levels']} levels), {sens['trials']} trials each, one "
            "seed. μ* (mean absolute elementary effect, in the scalar's units over the whole "
            "box width); the largest per claim in bold; `held` = share of design points where "
            "the claim holds.",
            "",
            "| claim | scalar | held | " + " | ".join(f"`{_short(n)}`" for n in names) + " |",
            "|---|---|---|" + "---|" * len(names),
        ]
        for cid, out in sens["outputs"].items():
            if "indices" not in out:
                lines.append(
                    f"| {cid} | {out['scalar']} | {_share(out['held_share'])} | "
                    f"{out['skipped']} |" + " |" * (len(names) - 1)
                )
                continue
            mu = [out["indices"][n]["mu_star"] or 0.0 for n in names]
            top = max(mu)
            cells = [f"**{m:.3g}**" if m == top and top > 0 else f"{m:.3g}" for m in mu]
            lines.append(
                f"| {cid} | {out['scalar']} | {_share(out['held_share'])} | "
                + " | ".join(cells)
                + " |"
            )
    lines += ["", f"Settings: `{s}`.", ""]
    return "\n".join(lines)


def figure(summary: dict[str, Any], path: Path) -> None:
    """Claims × parameters: green holds, red fails, grey not moved; shares on the left; below,
    Morris μ* per claim scaled to its largest parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    claims = summary["claims"]
    params = list(summary["parameters"]) if summary["perturb"] > 0 else []
    sens = summary["sensitivity"]
    has_sens = "outputs" in sens
    ncol = 2 + 2 * len(params)
    fig_w = max(6.0, 1.6 + 0.45 * ncol)
    rows = 2 if has_sens else 1
    fig, axes = plt.subplots(
        rows,
        1,
        figsize=(fig_w, 0.45 * len(claims) * rows + 2.6 * rows),
        squeeze=False,
        layout="constrained",
    )
    ax = axes[0, 0]
    grid = np.full((len(claims), ncol), np.nan)
    text = [["" for _ in range(ncol)] for _ in claims]
    for i, c in enumerate(claims):
        for j, key in enumerate(("share_seeds", "share_neighbourhood")):
            if c[key] is not None:
                grid[i, j] = c[key]
                text[i][j] = f"{c['held']}/{c['seeds']}" if j == 0 else f"{c[key]:.0%}"
        for k, p in enumerate(params):
            for m, d in enumerate(("-", "+")):
                v = c["neighbourhood"][p][d]
                grid[i, 2 + 2 * k + m] = np.nan if v is None else float(v)
                text[i][2 + 2 * k + m] = "" if v is None else ("✓" if v else "✗")
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="#dddddd")
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for i in range(len(claims)):
        for j in range(ncol):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=6.5)
    ax.set_yticks(
        range(len(claims)),
        [f"{c['id']}{' (not robust)' if c['robust'] is False else ''}" for c in claims],
    )
    labels = ["seeds", "nbhd"] + [f"{_short(p)} {d}" for p in params for d in ("−", "+")]
    ax.set_xticks(range(ncol), labels, rotation=70, ha="right", fontsize=7)
    ax.axvline(1.5, color="black", lw=1.5)
    for k in range(1, len(params)):
        ax.axvline(1.5 + 2 * k, color="white", lw=1)
    chars = int(fig_w * 12)  # a title wider than a narrow figure (few parameters) is cut off
    ax.set_title(
        textwrap.fill(
            f"Claims across {len(summary['seeds'])} seeds "
            + (f"and ±{summary['perturb']:g} per parameter " if params else "")
            + f"({summary['trials']} trials; green holds, red fails"
            + (", grey not moved)" if params else "; no neighbourhood with --perturb 0)"),
            chars,
        ),
        fontsize=9,
    )
    if has_sens:
        ax2 = axes[1, 0]
        names = list(sens["bounds"])
        mat = np.full((len(claims), len(names)), np.nan)
        for i, c in enumerate(claims):
            out = sens["outputs"].get(c["id"], {})
            if "indices" in out:
                mu = np.array([out["indices"][n]["mu_star"] or 0.0 for n in names])
                mat[i] = mu / mu.max() if mu.max() > 0 else 0.0
        ax2.imshow(
            np.ma.masked_invalid(mat),
            cmap=ListedColormap(plt.get_cmap("Blues")(np.linspace(0.05, 0.9, 256))),
            vmin=0,
            vmax=1,
            aspect="auto",
        )
        for i in range(len(claims)):
            for j in range(len(names)):
                if not np.isnan(mat[i, j]):
                    ax2.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=6)
        ax2.set_yticks(
            range(len(claims)),
            [f"{c['id']} {sens['outputs'].get(c['id'], {}).get('scalar') or ''}" for c in claims],
        )
        ax2.set_xticks(
            range(len(names)), [_short(n) for n in names], rotation=70, ha="right", fontsize=7
        )
        ax2.set_title(
            textwrap.fill(
                f"Morris μ* of each claim's scalar, relative to its largest parameter "
                f"({sens['points']} points, {sens['trials']} trials)",
                chars,
            ),
            fontsize=9,
        )
    from archrefine.experiments.plots import save_figure

    save_figure(fig, path, dpi=130, tight=False)
