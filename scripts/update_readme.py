"""Refresh the generated parts of README.md: claims tables and the configuration reference.

    archrefine reproduce --out runs/readme --force
    archrefine reproduce --space grounded --out runs/grounded --force
    archrefine reproduce --config configs/grounded-canonical.toml --out runs/canonical --force
    archrefine loop configs/loop/learned.toml --out runs/loop-learned --force
    python scripts/update_readme.py --paper runs/readme --grounded runs/grounded \
        runs/canonical runs/nasbench runs/learned --loop runs/loop-learned

Claims sections are copied from reproduce directories' claims.md (numbers the code produced);
the reference tables are `archrefine config --reference` and `archrefine config --loop
--reference`.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from archrefine.config import reference_table

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


def _cell(value) -> str:
    if not isinstance(value, float):
        return str(value)
    return "–" if value != value else f"{value:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--paper", type=Path)
    ap.add_argument("--grounded", type=Path, nargs="*", default=[])
    ap.add_argument("--loop", type=Path, help="a finished `archrefine loop` directory")
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
    README.write_text(text)


if __name__ == "__main__":
    main()
