"""Refinement that no selected candidate can break: a failing `refine` leaves the generator as the
last completed cycle left it, and the run goes on.

`generator.refine` learns from text the model wrote (the selected candidates' responses): hostile
data, like everything a candidate produced. A refine that raises may have changed the generator
halfway (optimizer steps taken, a counter of pairs seen moved), so the generator is first restored
from the state saved after the previous cycle (`generator/cycle-NNN/`; the loop saves
`cycle-000`, the state before any refinement, for cycle 1). The cycle's new selection is then the
suspect: refine runs once more without it. If that succeeds, those candidates stay unselected,
their row's reason says why, and the run goes on; if it fails too, the failure is not the new
data's (an earlier selection, a bug, the machine), so the generator keeps the previous cycle's
state, the selection stands and the cycle's loss is NaN. Either way one warning line is logged
(logger `archrefine.real`) and the traceback is written to `errors/cycle-NNN-refine.txt` in the
run directory: a programming error is never swallowed silently. What happens depends only on the
store and the saved state, so a cycle redone after `--resume` does the same.
"""

from __future__ import annotations

import math
import numbers
import traceback
from collections.abc import Callable
from pathlib import Path

from archrefine.core.store import StoreError, atomic_write_text
from archrefine.real.candidates import CandidateStore
from archrefine.real.guard import describe, log
from archrefine.real.text import GeneratorUnavailable, TextGenerator
from archrefine.sandbox.sandbox import one_line

Pairs = Callable[[], list[tuple[str, str]]]


def refine_safely(
    generator: TextGenerator,
    pairs: Pairs,
    store: CandidateStore,
    c: int,
    chosen: list[int],
    out: Path,
) -> float | None:
    """`generator.refine(pairs(), c)`'s loss; after a failure, what the module doc says.

    GeneratorUnavailable (the backend is gone) and interrupts end the run as before: the state
    on disk still names cycle c - 1 complete, and `--resume` redoes this cycle."""
    first = _attempt(generator, pairs, c)
    if not isinstance(first, Exception):
        return first
    why = describe(first)
    where = _record(out, c, first)
    _restore(generator, out, c)
    if chosen:
        store.mark_selected(chosen, selected=False)
        second = _attempt(generator, pairs, c)
        if not isinstance(second, Exception):
            note = f"ok; left out of refinement: refining on cycle {c}'s selection raised {why}"
            for cid in chosen:
                store.update(cid, reason=one_line(note))
            log.warning(
                "cycle %d: refining the generator on its %d selected candidates raised %s; "
                "refined without them (traceback in %s)",
                c, len(chosen), why, where,
            )  # fmt: skip
            return second
        where = _record(out, c, first, second)
        _restore(generator, out, c)
        store.mark_selected(chosen)
    log.warning(
        "cycle %d: refining the generator raised %s; it keeps the state of cycle %d "
        "(traceback in %s)",
        c, why, c - 1, where,
    )  # fmt: skip
    return None


def _attempt(generator: TextGenerator, pairs: Pairs, c: int) -> float | None | Exception:
    """The loss (a finite float or None), or the exception refine raised."""
    data = pairs()  # outside the net: a damaged store is not the generator's failure
    try:
        loss = generator.refine(data, c)
    except GeneratorUnavailable:
        raise
    except Exception as err:  # noqa: BLE001 - recorded, logged and recovered from by the caller
        return err
    ok = isinstance(loss, numbers.Real) and not isinstance(loss, bool) and math.isfinite(loss)
    return float(loss) if ok else None


def _record(out: Path, c: int, *errs: Exception) -> Path:
    """The tracebacks of the cycle's failed attempts, atomically, in
    `errors/cycle-NNN-refine.txt`; logged at DEBUG as well. A file that cannot be written is
    only logged."""
    path = out / "errors" / f"cycle-{c:03d}-refine.txt"
    text = "\n".join(
        "".join(traceback.format_exception(type(err), err, err.__traceback__)) for err in errs
    )
    log.debug("cycle %d: refine failed:\n%s", c, text)
    try:
        atomic_write_text(path, text)
    except OSError as oserr:
        log.warning("cannot write %s (%s)", path, describe(oserr))
    return path


def _restore(generator: TextGenerator, out: Path, c: int) -> None:
    """Load the state saved after cycle c - 1; StoreError (one line) when that fails."""
    saved = out / "generator" / f"cycle-{c - 1:03d}"
    try:
        generator.load(saved)
    except Exception as err:  # noqa: BLE001 - whatever the backend's load raises
        raise StoreError(
            f"cycle {c}: refining the generator failed and its state from before the cycle "
            f"({saved}) cannot be loaded back ({describe(err)}); --resume continues from "
            f"cycle {c - 1}"
        ) from None
