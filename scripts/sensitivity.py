"""Which claims break when each model parameter moves ±50%? Writes the table in docs/model.md.

    python scripts/sensitivity.py --trials 100 --seed 0

Each row reruns the four experiments with one parameter scaled by 0.5 and by 1.5 (clipped to its
allowed range) and lists the claims that no longer hold. The table between the markers
`<!-- sensitivity:start -->` and `<!-- sensitivity:end -->` in docs/model.md is replaced.
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timezone
from pathlib import Path

from archrefine.config import Config, ConfigError
from archrefine.experiments.claims import detect, evaluate, paper_plan
from archrefine.experiments.runner import run_plan

PARAMS = [
    "generator.base_logit",
    "generator.bonus_max",
    "generator.bonus_rate",
    "generator.familiarity",
    "generator.ceiling",
    "generator.prior_rate",
    "generator.smoothing",
    "schedule.rate",
    "schedule.min_rate",
    "schedule.max_rate",
    "schedule.period",
    "loop.fresh_fraction",
    "loop.novelty_k",
    "space.known",
    "fitness.k",
]
DOC = Path(__file__).resolve().parents[1] / "docs" / "model.md"


def holds(config: Config) -> dict[str, bool]:
    frame = run_plan(config, paper_plan(config.loop.population))
    return {c.id: c.holds for c in evaluate(frame, detect(frame, config.schedule.kind, n_boot=0))}


def get(config: Config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def scaled(config: Config, key: str, factor: float) -> tuple[Config | None, object]:
    value = get(config, key)
    new = value * factor
    new = max(int(round(new)), 0) if isinstance(value, int) else round(new, 4)
    if key == "generator.ceiling":
        new = min(new, 1.0)
    if new == value:
        return None, new
    try:
        return config.with_overrides({key: new}), new
    except ConfigError:
        return None, new


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    base = Config(trials=args.trials, seed=args.seed)
    ref = holds(base)
    rows = [
        f"Baseline ({args.trials} trials, seed {args.seed}): holds "
        f"{', '.join(k for k, v in ref.items() if v) or 'none'}; fails "
        f"{', '.join(k for k, v in ref.items() if not v) or 'none'}.",
        "",
        "| parameter | value | ×0.5 → breaks | ×1.5 → breaks |",
        "|---|---|---|---|",
    ]
    for key in PARAMS:
        cells = []
        for factor in (0.5, 1.5):
            cfg, new = scaled(base, key, factor)
            if cfg is None:
                cells.append(f"({new}: not allowed)")
                continue
            got = holds(cfg)
            broke = [k for k in ref if ref[k] and not got[k]]
            fixed = [k for k in ref if not ref[k] and got[k]]
            text = ", ".join(broke) or "none"
            if fixed:
                text += f" (now holds: {', '.join(fixed)})"
            cells.append(f"{new}: {text}")
        rows.append(f"| `{key}` | {get(base, key)} | {cells[0]} | {cells[1]} |")
        print(rows[-1], flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    rows.append("")
    rows.append(
        f"Generated {stamp} by `python scripts/sensitivity.py --trials {args.trials} "
        f"--seed {args.seed}`."
    )
    table = "\n".join(rows)
    text = DOC.read_text()
    new = re.sub(
        r"(<!-- sensitivity:start -->\n).*?(<!-- sensitivity:end -->)",
        lambda m: m.group(1) + table + "\n" + m.group(2),
        text,
        flags=re.S,
    )
    DOC.write_text(new)


if __name__ == "__main__":
    main()
