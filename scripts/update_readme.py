"""Refresh the generated parts of README.md: claims tables and the configuration reference.

    archrefine reproduce --out runs/readme --force
    archrefine reproduce --space grounded --out runs/grounded --force
    archrefine reproduce --config configs/grounded-canonical.toml --out runs/canonical --force
    archrefine loop configs/loop/learned.toml --out runs/loop-learned --force
    archrefine robustness --seeds 10 --trials 100 --perturb 0.15 --seed 101 \
        --trajectories 2 --morris-trials 10 --out runs/robust --force
    python scripts/update_readme.py --paper runs/readme --grounded runs/grounded \
        runs/canonical runs/nasbench runs/learned --loop runs/loop-learned \
        --robustness runs/robust

Claims sections are copied from reproduce directories' claims.md (numbers the code produced);
the reference tables are `archrefine config --reference` and `archrefine config --loop
--reference`.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from archrefine.core.config import reference_table

README = Path(__file__).resolve().parents[1] / "README.md"


def replace(text: str, marker: str, body: str) -> str:
    pattern = rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)"
    return re.sub(
        pattern, lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text, flags=re.S
    )


def section(run: Path) -> str:
    title, _, table = (run / "claims.md").read_text().partition("\n\n")
    command = json.loads((run / "run.json").read_text()).get("command", "archrefine reproduce")
    return f"{title.lstrip('# ')}, from `{command}`:\n\n{table}"


def loop_section(run: Path) -> str:
    """A real loop's trajectory (a row every few cycles) and its claims, from its own files."""
    import pandas as pd

    info = json.loads((run / "run.json").read_text())
    frame = pd.read_parquet(run / "metrics.parquet")
    last = int(frame.cycle.max())
    rows = frame[(frame.cycle % 3 == 1) | (frame.cycle == last)]
    cols = ["cycle", "validity", "novelty", "diversity", "fitness", "best_fitness",
            "grounded_novelty", "duplicates", "n_no_code"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows[cols].to_dict("records"):  # per-column types kept (counts stay integers)
        lines.append("| " + " | ".join(_cell(r[c]) for c in cols) + " |")
    minutes = info.get("seconds", 0) / 60
    title, _, claims = (run / "claims.md").read_text().partition("\n\n")
    return (
        f"Measured: `{info.get('command')}` ({info.get('isolation')} sandbox, "
        f"{minutes:.0f} min on the 2-core machine, finished {info.get('finished', '?')}):\n\n"
        + "\n".join(lines)
        + f"\n\n{title.lstrip('# ')}:\n\n{claims}"
    )


# What scripts/calibrate_paper.py fits the paper model to (docs/model.md, "Calibration"): a claim
# whose measurement was a calibration target is no evidence when it holds; the rest are predictions.
FITTED = {
    "C1": "validity half fitted (kinks at 7.5, 15.5)",
    "C3": "fitted (constant schedule's loss)",
}


def _pct(share: float | None) -> str:
    """A share as a percentage; "–" for null (no seed measured it)."""
    return "–" if share is None else f"{share:.0%}"


def robustness_section(paper: Path, robust: Path) -> str:
    """Per claim: the seed-0 verdict and confidence (`paper`'s claims.json), and the shares of
    fresh seeds and of the ±FRAC neighbourhood where it held (`robust`'s robustness.json)."""
    claims = {c["id"]: c for c in json.loads((paper / "claims.json").read_text())}
    study = json.loads((robust / "robustness.json").read_text())
    command = json.loads((robust / "run.json").read_text()).get("command", "")
    lines = [
        "| claim | holds (seed 0) | confidence | seeds held | neighbourhood held | robust | "
        "fitted or predicted |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in study["claims"]:
        c = claims.get(r["id"], {})
        verdict = {True: "yes", False: "**no**", None: "–"}[c.get("holds")]
        conf = c.get("confidence")
        nb = r.get("share_neighbourhood")
        robust_ = {True: "yes", False: "**no**", None: "–"}[r.get("robust")]
        lines.append(
            f"| {r['id']} | {verdict} | {'–' if conf is None else f'{conf:.2f}'} | "
            f"{r['held']}/{r['seeds']} ({_pct(r['share_seeds'])}) | {_pct(nb)} | {robust_} | "
            f"{FITTED.get(r['id'], 'predicted')} |"
        )
    return (
        f"From `archrefine reproduce --out {paper}` (seed 0, {study['trials']} trials) and "
        f"`{command}` ({len(study.get('seeds', []))} fresh seeds, each free parameter "
        f"±{study['perturb']:.0%} one at a time; robust = ≥ 90% of both):\n\n"
        + "\n".join(lines)
        + "\n"
    )


def _cell(value) -> str:
    if not isinstance(value, float):
        return str(value)
    return "–" if value != value else f"{value:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--paper", type=Path)
    ap.add_argument("--grounded", type=Path, nargs="*", default=[])
    ap.add_argument("--loop", type=Path, help="a finished `archrefine loop` directory")
    ap.add_argument("--robustness", type=Path, help="a finished `archrefine robustness` directory")
    args = ap.parse_args()
    from archrefine.real.config import RealConfig

    text = replace(README.read_text(), "reference", reference_table())
    text = replace(text, "loop-reference", reference_table(RealConfig))
    if args.paper:
        text = replace(text, "claims", section(args.paper))
    if args.grounded:
        text = replace(text, "grounded", "\n\n".join(section(r) for r in args.grounded))
    if args.loop:
        text = replace(text, "loop-demo", loop_section(args.loop))
    if args.robustness:
        if not args.paper:
            ap.error("--robustness needs --paper (the seed-0 verdicts)")
        text = replace(text, "robustness", robustness_section(args.paper, args.robustness))
    README.write_text(text)


if __name__ == "__main__":
    main()
