"""Refresh the generated parts of README.md: the claims table and the configuration reference.

    archrefine reproduce --out runs/readme --force && python scripts/update_readme.py runs/readme

The claims section is copied from a reproduce directory's claims.md (numbers the code produced);
the reference table is `archrefine config --reference`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from archrefine.config import reference_table

README = Path(__file__).resolve().parents[1] / "README.md"


def replace(text: str, marker: str, body: str) -> str:
    pattern = rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)"
    return re.sub(
        pattern, lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text, flags=re.S
    )


def main() -> None:
    text = replace(README.read_text(), "reference", reference_table())
    if len(sys.argv) > 1:
        run = Path(sys.argv[1])
        claims = (run / "claims.md").read_text().split("\n", 2)[2]  # drop the title line
        header = (
            f"From `archrefine reproduce --trials {_get(run, 'trials')} --seed "
            f"{_get(run, 'seed')}` (the defaults); regenerate with the command at the top "
            "of `scripts/update_readme.py`.\n"
        )
        text = replace(text, "claims", header + "\n" + claims)
    README.write_text(text)


def _get(run: Path, key: str) -> str:
    match = re.search(rf"^{key} = (\S+)", (run / "config.toml").read_text(), re.M)
    return match.group(1) if match else "?"


if __name__ == "__main__":
    main()
