"""What keeps one hostile candidate, a broken sandbox or a damaged store from ending a run wrongly.

Three rules (docs/real-loop.md lists the tests that show them):

* **Nothing a candidate does raises in the loop's process.** Every step that touches one
  candidate (parsing its response, scoring its novelty, evaluating it, storing its outcome)
  runs under `contained`: any exception becomes that candidate's `crashed` outcome with a
  one-line reason, and the loop goes on. Outcomes are re-validated here (status, one-line
  reason, non-negative integer params of any size, finite accuracy in [0, 1]) whatever the
  sandbox sent.
* **The sandbox's failures are not the candidates'.** When a whole batch fails (SandboxError,
  or every outcome `crashed`/`oom`), a known-good network is evaluated as a probe. If the probe
  fails too, the cause is the environment (workers that cannot start, an unusable memory limit)
  and the run stops with one line, the batch left `pending` for `--resume`; if it passes, the
  candidates are blamed one by one, so a row cannot stay pending forever.
* **A damaged store is never continued.** On resume the store must pass SQLite's `quick_check`
  and hold exactly `population` finished rows for every cycle `state.json` records complete
  (a truncated file or WAL can pass `quick_check` with rows gone), whose rows match the digest
  state.json kept of each (`rows_digest`: flipped bits inside a row, another run's store);
  otherwise one line names the file and how to recover what is intact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from archrefine.real.candidates import CandidateStore, CandidateStoreError
from archrefine.sandbox.sandbox import STATUSES, SandboxError, one_line

_T = TypeVar("_T")
log = logging.getLogger("archrefine.real")
"""Where the loop reports what it recovered from: a refine that failed, an unexpected exception
while handling one candidate (WARNING, one line; tracebacks at DEBUG)."""
_WARNED: set[tuple[str, str]] = set()
_FAILED = ("crashed", "oom")  # statuses that may be the sandbox's fault rather than the code's


def crashed(why: str) -> dict[str, Any]:
    """Outcome fields of a candidate whose handling raised: `crashed`, with the reason."""
    return dict(status="crashed", reason=one_line(f"crashed: {why}"), params=None, accuracy=None)


def describe(err: BaseException) -> str:
    """`Type: first line of the message`, even for exceptions whose `str` itself fails: a
    message that holds a traceback or a candidate's text never reaches a row whole."""
    try:
        text = next((line for line in str(err).splitlines() if line.strip()), "")
    except Exception:  # noqa: BLE001 - a hostile object's __str__
        text = ""
    return one_line(f"{type(err).__name__}: {text}" if text else type(err).__name__)


def contained(step: str, fn: Callable[[], _T]) -> _T | dict[str, Any]:
    """`fn()`, or the `crashed` fields naming `step` if it raised anything but an interrupt or a
    failure of the store or the sandbox themselves (those end the run cleanly instead)."""
    try:
        return fn()
    except (CandidateStoreError, SandboxError):
        raise
    except Exception as err:  # noqa: BLE001 - RecursionError, MemoryError, anything hostile
        unexpected(step, err)
        return crashed(f"{step} raised {describe(err)}")


def unexpected(step: str, err: Exception) -> None:
    """Log an exception a safety net turned into one candidate's outcome: the first of each
    kind per step at WARNING (one line), every one with its traceback at DEBUG. A route the
    explicit checks missed, or a bug, is then seen, not only recorded in a row."""
    kind = (step, type(err).__name__)
    level = logging.DEBUG if kind in _WARNED else logging.WARNING
    _WARNED.add(kind)
    why = describe(err)
    log.log(level, "%s raised %s; that candidate is crashed, the run goes on", step, why)
    log.debug("traceback of %s", why, exc_info=err)


def checked(outcome: object) -> dict[str, Any]:
    """The store fields of a sandbox outcome, validated; a malformed one is `crashed`."""
    try:
        status = getattr(outcome, "status", None)
        if status not in STATUSES:
            return crashed(f"malformed outcome from the sandbox (status {status!r:.40})")
        reason = getattr(outcome, "reason", "")
        params = getattr(outcome, "params", None)
        accuracy = getattr(outcome, "accuracy", None)
        seconds = getattr(outcome, "seconds", 0.0)
        if params is not None and not _count(params):
            return crashed("malformed outcome from the sandbox (params)")
        if accuracy is not None and not _fraction(accuracy):
            return crashed("malformed outcome from the sandbox (accuracy)")
        ok_seconds = isinstance(seconds, numbers.Real) and math.isfinite(seconds) and seconds >= 0
        return dict(
            status=status,
            reason=one_line(reason) if isinstance(reason, str) else "",
            params=None if params is None else int(params),
            accuracy=None if accuracy is None else float(accuracy),
            seconds=round(float(seconds), 3) if ok_seconds else 0.0,
        )
    except Exception as err:  # noqa: BLE001
        return crashed(f"malformed outcome from the sandbox ({describe(err)})")


def _count(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0


def _fraction(value: object) -> bool:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    return ok and math.isfinite(value) and 0.0 <= value <= 1.0  # type: ignore[arg-type]


class Evaluation:
    """Evaluates batches on `pool`, telling the candidates' failures from the sandbox's."""

    def __init__(self, pool: Any, probe: str, options: dict[str, Any]) -> None:
        self.pool, self.probe_source, self.options = pool, probe, options

    def run(self, codes: list[str], **train: Any) -> list[dict[str, Any]]:
        """Validated outcome fields for `codes`; raises SandboxError when the sandbox (not the
        candidates) is at fault, leaving the batch to be evaluated again on resume."""
        try:
            outs = self.pool.map(codes, **self.options, **train)
            if not isinstance(outs, list) or len(outs) != len(codes):
                raise RuntimeError(f"the evaluator returned {type(outs).__name__} for a batch")
        except SandboxError as err:
            return self._blame(codes, train, f"the sandbox failed ({describe(err)})")
        except Exception as err:  # noqa: BLE001 - e.g. a reply that cannot even be decoded
            return self._blame(codes, train, f"evaluating it raised {describe(err)}", probe=False)
        fields = [checked(o) for o in outs]
        if all(f["status"] in _FAILED for f in fields):
            why = f"every candidate of a batch of {len(codes)} failed ({fields[0]['reason']})"
            self._probe(why, train)
        return fields

    def _blame(self, codes, train, why: str, probe: bool = True) -> list[dict[str, Any]]:
        """The batch failed as a whole: if the sandbox still runs a known-good network, run
        the candidates one at a time, and the one that fails alone is `crashed`."""
        if probe:
            self._probe(why, train)
        if len(codes) == 1:
            return [crashed(why)]
        return [f for code in codes for f in self.run([code], **train)]

    def _probe(self, why: str, train: dict[str, Any]) -> None:
        """Evaluate the probe as the batch was (trained if it was): an unusable memory limit
        often shows only in training."""
        try:
            out = self.pool.map([self.probe_source], **self.options, **train)
            problem = None if checked(out[0])["status"] == "ok" else checked(out[0])["reason"]
        except Exception as err:  # noqa: BLE001
            problem = describe(err)
        if problem is not None:
            raise SandboxError(
                f"the sandbox is not working, not the candidates: {why}, and a known-good "
                f"network failed too ({problem}); check evaluate.memory_mb/timeout_s and the "
                "sandbox (docs/sandbox.md), then --resume (the batch stays pending)"
            )


PROBE = """import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                               nn.Flatten(), nn.Linear(4, 10))

    def forward(self, x):
        return self.f(x)
"""


def probe_source() -> str:
    """A tiny known-good network (~130 parameters, trains in well under a second), the
    `Evaluation` probe: if even this fails, the sandbox is at fault, not the candidates."""
    return PROBE


def verify_store(
    out: Path,
    completed: int,
    population: int,
    metrics_cycles: list[int],
    digests: dict[str, str] | None = None,
) -> None:
    """Refuse to continue from a store (or metrics) missing what `state.json` records done, or
    whose completed cycles' rows differ from the `digests` state.json kept of them."""
    path = out / "candidates.sqlite"
    if completed == 0:
        return
    if sorted(metrics_cycles)[:completed] != list(range(1, completed + 1)):
        raise CandidateStoreError(
            f"{out}/metrics.parquet lists cycles {sorted(metrics_cycles)[:12]} but state.json "
            f"records {completed} complete; nothing was changed (restore the file, or --force)"
        )
    if not path.exists() or path.stat().st_size == 0:
        raise CandidateStoreError(
            f"{path} is missing or empty but {out}/state.json records {completed} cycles "
            "complete; nothing was changed (restore it from a backup, or start afresh with --force)"
        )
    try:
        store = CandidateStore(path)
    except CandidateStoreError as err:
        raise CandidateStoreError(
            f"{err}; recover the intact rows with `sqlite3 {path} .recover | sqlite3 "
            "recovered.sqlite`, or start afresh with --force"
        ) from None
    with store:
        problem = store.check()
        if problem:
            raise store.damaged(problem)
        try:
            counts = store.cycle_counts()
        except sqlite3.DatabaseError as err:
            raise store.damaged(one_line(err)) from None
        for c in range(1, completed + 1):
            n, pending = counts.get(c, (0, 0))
            if n != population or pending:
                raise store.damaged(
                    f"cycle {c}, recorded complete, has {n} of {population} candidates"
                    + (f", {pending} never evaluated" if pending else "")
                )
        for c in range(1, completed + 1):
            kept = (digests or {}).get(str(c))
            try:
                found = rows_digest(store.cycle_rows(c)) if kept is not None else None
            except (sqlite3.DatabaseError, ValueError, TypeError) as err:
                raise store.damaged(f"cycle {c}'s rows cannot be read ({describe(err)})") from None
            if found != kept:
                raise store.damaged(
                    f"cycle {c}'s rows differ from those recorded when it completed: edited, "
                    "bytes flipped, or another run's store"
                )


def rows_digest(rows: list[dict]) -> str:
    """SHA-256 of a finished cycle's rows as the loop left them (every field but `created`):
    kept in state.json, so a store whose rows changed since, e.g. bytes flipped inside a
    candidate's text (which SQLite's own check cannot see) or another run's store copied in,
    is refused on resume instead of being continued."""
    fields = [{k: v for k, v in sorted(r.items()) if k != "created"} for r in rows]
    text = json.dumps(fields, default=str, ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()
