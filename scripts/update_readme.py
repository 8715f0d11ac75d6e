"""Refresh the generated parts of README.md: claims tables and the configuration reference.

    archrefine reproduce --out runs/readme --force
    archrefine reproduce --space grounded --out runs/grounded --force
    archrefine reproduce --config configs/grounded-canonical.toml --out runs/canonical --force
    python scripts/update_readme.py --paper runs/readme --grounded runs/grounded \
        runs/canonical

Claims sections are copied from reproduce directories' claims.md (numbers the code produced);
the reference table is `archrefine config --reference`.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--paper", type=Path)
    ap.add_argument("--grounded", type=Path, nargs="*", default=[])
    args = ap.parse_args()
    text = replace(README.read_text(), "reference", reference_table())
    if args.paper:
        text = replace(text, "claims", section(args.paper))
    if args.grounded:
        text = replace(text, "grounded", "\n\n".join(section(r) for r in args.grounded))
    README.write_text(text)


if __name__ == "__main__":
    main()
