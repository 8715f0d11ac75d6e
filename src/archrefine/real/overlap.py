"""One cycle's scoring and evaluation, overlapped with its generation.

While the generator writes the cycle's next batch, the sandbox already runs the candidates of
the batches before it (in one background thread that only calls the evaluator; every store
write happens in the loop's thread). The results do not depend on the overlap:

* novelty is scored batch by batch in the order rows were added, against the archive as it
  stood when the cycle began and the cycle's earlier rows: exactly what scoring them all at the
  end computes;
* a candidate's outcome depends on its code, the seed and the data only (the sandbox trains
  with the run's seed), never on which batch it ran in or when;
* nothing reads an outcome before the cycle's selection, which waits for every evaluation.

A run killed mid-cycle keeps every row and outcome stored so far; resuming scores the rows not
yet scored and evaluates the `pending` ones, as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from archrefine.code.novelty_code import CodeNovelty
from archrefine.real.candidates import CandidateStore, CandidateStoreError
from archrefine.real.config import RealConfig
from archrefine.real.guard import Evaluation, crashed, describe, unexpected
from archrefine.sandbox.sandbox import TrainSpec

#: False: score and evaluate only once generation is complete (the order before the overlap,
#: kept so benchmarks/real_loop.py can measure both in one run; the results are the same)
OVERLAP = True


class CycleWork:
    """Scores and evaluates cycle `c`'s candidates as they are generated.

    Call `step()` after each stored batch (it never blocks on the sandbox), `finish()` once
    generation is complete (it waits for every evaluation), and `close()` in a `finally` (after
    a failure it still stores the outcomes of the evaluation in flight).
    """

    def __init__(
        self,
        store: CandidateStore,
        evaluation: Evaluation,
        archive: CodeNovelty,
        c: int,
        config: RealConfig,
        data: Any,
        notify: Callable[[Any], None],
        event: Callable[..., Any],
    ) -> None:
        self.store, self.evaluation, self.archive, self.c = store, evaluation, archive, c
        self.config, self.data, self.notify, self.event = config, data, notify, event
        nv = config.novelty
        self.seen = CodeNovelty(nv.shingle, nv.num_perm, nv.threshold, seed=1, twins=nv.twins)
        self.scored = 0  # rows of the cycle scored so far (in the order they were added)
        self.ready: list[dict] = []  # scored and pending, not yet sent to the sandbox
        self.done = 0
        ev = config.evaluate
        self.spec = TrainSpec(ev.epochs, ev.lr, ev.batch_size, seed=config.seed)
        self.spec = self.spec if ev.train else None
        self.chunk = ev.workers * 2  # most candidates per evaluator call (as before the overlap)
        self.flight: tuple[list[dict], Future] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="archrefine-evaluate")

    # ---- novelty, in row order ------------------------------------------------------------

    def _score(self) -> None:
        """Novelty of the rows added since the last call; a near duplicate of the archive or of
        an earlier row of the cycle is flagged (it is validated, not trained)."""
        rows = self.store.cycle_rows(self.c)
        for r in rows[self.scored :]:
            self.scored += 1
            if r["code"] is None or r["status"] == "rejected":
                continue
            try:
                dup = self.archive.is_near_duplicate(r["code"]) or self.seen.is_near_duplicate(
                    r["code"]
                )
                if r["novelty"] is None:
                    novelty = self.archive.score(r["code"])
                    self.store.update(r["id"], novelty=novelty, near_duplicate=dup)
                    r = r | {"novelty": novelty, "near_duplicate": dup}
                self.seen.add(str(r["id"]), r["code"])
            except ValueError:  # no code tokens at all
                why = "the code block has no code tokens"
                self.store.update(r["id"], status="rejected", reason=why)
                continue
            except CandidateStoreError:
                raise
            except Exception as err:  # noqa: BLE001 - hostile code must not end the run
                unexpected("scoring novelty", err)
                self.store.update(r["id"], **crashed(f"scoring novelty raised {describe(err)}"))
                continue
            if r["status"] == "pending":
                self.ready.append(r)
            else:
                self.done += 1  # evaluated before an interruption

    # ---- evaluation, in the background ----------------------------------------------------

    def _run(self, part: list[dict]) -> list[list[dict]]:
        """In the background thread: the sandbox's outcome fields, non-duplicates trained."""
        outs = []
        for dup in (False, True):
            sub = [r for r in part if r["near_duplicate"] == dup]
            train = dict(train=self.spec, data=self.data) if self.spec and not dup else {}
            outs.append(self.evaluation.run([r["code"] for r in sub], **train) if sub else [])
        return outs

    def _collect(self, wait: bool) -> None:
        """Store the outcomes of the evaluation in flight, if it is done (or `wait`)."""
        if self.flight is None or not (wait or self.flight[1].done()):
            return
        part, fut = self.flight
        self.flight = None
        outs = fut.result()
        for dup, fields in zip((False, True), outs, strict=True):
            for r, f in zip([r for r in part if r["near_duplicate"] == dup], fields, strict=True):
                try:
                    self.store.update(r["id"], **f)
                except ValueError as err:  # a field the store refuses: the candidate's fault
                    why = f"its outcome cannot be stored ({describe(err)})"
                    self.store.update(r["id"], **crashed(why))
                except CandidateStoreError:
                    raise
                except Exception as err:  # noqa: BLE001 - only this candidate's row is at stake
                    unexpected("storing an outcome", err)
                    why = f"storing its outcome raised {describe(err)}"
                    self.store.update(r["id"], **crashed(why))
        self.done += len(part)
        self.notify(self.event(self.c, "evaluate", self.done, self.done + len(self.ready)))

    def _submit(self) -> None:
        if self.flight is None and self.ready:
            part, self.ready = self.ready[: self.chunk], self.ready[self.chunk :]
            self.flight = (part, self._thread.submit(self._run, part))

    def step(self) -> None:
        """After a batch is stored: score it, store finished outcomes, start the next ones."""
        if not OVERLAP:
            return
        self._score()
        self._collect(wait=False)
        self._submit()

    def finish(self) -> None:
        """Generation is complete: evaluate every remaining candidate, storing as they come."""
        self._score()
        self.notify(self.event(self.c, "evaluate", self.done, self.done + len(self.ready)))
        while self.flight is not None or self.ready:
            self._collect(wait=True)
            self._submit()

    def close(self) -> None:
        """Store what is in flight (after a failure elsewhere), then end the thread."""
        try:
            with contextlib.suppress(Exception):  # the failure that brought us here matters
                self._collect(wait=True)
        finally:
            self._thread.shutdown(wait=True)
