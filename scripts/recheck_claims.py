"""Recompute a reproduce directory's claims, phases and figures from its saved metrics.

    python scripts/recheck_claims.py runs/grounded runs/canonical runs/nasbench runs/learned

The simulation is deterministic, so this gives what rerunning the directory's `archrefine
reproduce` command would give with the current checks, without simulating again (the learned
generator's reproduce takes most of an hour on two cores). Files are replaced atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from archrefine.core.config import load_config
from archrefine.core.store import atomic_write_text, read_metrics, write_json
from archrefine.experiments.claims import as_records, detect, evaluate
from archrefine.experiments.reproduce import Reproduction, claims_markdown, draw, phases_found


def recheck(directory: Path) -> Reproduction:
    config = load_config(directory / "config.toml")
    frame = read_metrics(directory)
    found = detect(frame, config.schedule.kind, seed=config.seed)
    claims = evaluate(
        frame,
        found,
        schedule_kind=config.schedule.kind,
        period=config.schedule.period,
        seed=config.seed,
    )
    write_json(directory / "claims.json", as_records(claims))
    atomic_write_text(directory / "claims.md", claims_markdown(claims, config))
    write_json(directory / "phases.json", found.__dict__)
    draw(
        directory,
        frame,
        found,
        config.schedule.kind,
        generator=config.generator.kind,
        period=config.schedule.period,
        named=phases_found(claims),
    )
    return Reproduction(frame, found, claims)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directories", type=Path, nargs="+")
    for directory in ap.parse_args().directories:
        rep = recheck(directory)
        held = sum(c.holds is True for c in rep.claims)
        print(f"{directory}: {held} of {sum(c.holds is not None for c in rep.claims)} hold")


if __name__ == "__main__":
    main()
