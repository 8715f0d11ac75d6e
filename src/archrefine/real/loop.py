"""The real refinement loop: prompt → response → code → sandbox → novelty → select → refine.

Every candidate goes into the run's SQLite store (`candidates.sqlite`) the moment it exists, and
its outcome the moment the sandbox reports it, so a run that dies loses at most the evaluations
in flight. A cycle's steps are idempotent given the store: generation fills only the missing
candidate slots, evaluation runs only `pending` rows, selection and refinement are recomputed
from the rows. `state.json` names the last *completed* cycle, written after its generator state
(`generator/cycle-NNN/`) and metrics; `resume` continues from there, after checking that the
store holds every row of those cycles (`guard.verify_store`). Every random draw depends only on
(seed, cycle, slot) or on state saved with the cycle, so a run killed at any moment and resumed
gives the same candidates and metrics as one never stopped (tests/test_loop_resume.py); one
candidate's failure is that candidate's outcome, never the run's end (`guard`), and a refine
that fails on the selection leaves the generator as the cycle before left it (`refining`).

Per-cycle metrics use the simulator's columns (one trial): validity = share of the population
that built, ran and had the right output shape; novelty = mean MinHash-Jaccard novelty of the
cycle's code against the archive as it stood when the cycle began; diversity = mean pairwise
MinHash-Jaccard distance within the cycle; fitness = mean held-out accuracy of the valid ones.
The structural yardstick shared with the simulator (`grounded_novelty`, `grounded_diversity`,
on the code mapped into the grounded vocabulary) sits beside them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from archrefine.code.novelty_code import CodeNovelty
from archrefine.core.schedules import rates
from archrefine.core.store import StoreError, write_json, write_parquet
from archrefine.real.candidates import CandidateStore
from archrefine.real.config import RealConfig
from archrefine.real.cycle_metrics import cycle_metrics, mapped
from archrefine.real.guard import (
    Evaluation,
    probe_source,
    rows_digest,
    verify_store,
)
from archrefine.real.overlap import CycleWork
from archrefine.real.prompts import (
    MAX_REFERENCE_CODE,
    Reference,
    prompt_check,
    read_template,
    render_fitted,
)
from archrefine.real.refining import refine_safely
from archrefine.real.replies import code_or_error, row, too_long
from archrefine.real.text import GeneratorUnavailable, Sampling, TextGenerator
from archrefine.sandbox.sandbox import one_line
from archrefine.sim.loop import recorded_rates

INPUT_SHAPE, CLASSES = (3, 32, 32), 10
BATCH = 8  # responses generated (and stored) per generator call


@dataclass
class Event:
    """Progress of a running loop, for displays: `stage` is generate, evaluate or cycle."""

    cycle: int
    stage: str
    done: int
    total: int
    row: dict = field(default_factory=dict)  # the cycle's metrics, once the cycle is complete


def completed_cycles(out: Path) -> int:
    """The last completed cycle recorded in `out/state.json` (0 when none)."""
    return _state(Path(out))[0]


def _state(out: Path) -> tuple[int, dict[str, str]]:
    """`state.json`: the last completed cycle and the digest of each completed cycle's rows."""
    path = out / "state.json"
    if not path.exists():
        return 0, {}
    try:
        state = json.loads(path.read_text())
        done, digests = state["completed"], state.get("digests", {})
        if not isinstance(done, int) or isinstance(done, bool) or done < 0:
            raise ValueError(f"completed = {done!r:.40} is not a cycle number")
        if not isinstance(digests, dict):
            raise ValueError("digests is not a table")
        return done, digests
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        raise StoreError(
            f"{path}: not a readable loop state ({one_line(str(err), 120)}); restore it "
            "(it names the last completed cycle) or start afresh with --force"
        ) from None


def run_loop(
    config: RealConfig,
    out: Path,
    generator: TextGenerator,
    *,
    on_event: Callable[[Event], None] | None = None,
) -> pd.DataFrame:
    """Run (or continue) the loop in `out` until `config.loop.cycles`; return the metrics."""
    out = Path(out)
    start, digests = _state(out)
    if start > config.loop.cycles:
        raise StoreError(
            f"{out}/state.json records {start} cycles complete, but the run has "
            f"{config.loop.cycles}: restore state.json or config.toml, or start afresh with --force"
        )
    rows = _read_rows(out)
    verify_store(out, start, config.loop.population, [int(r["cycle"]) for r in rows], digests)
    digests = {k: v for k, v in digests.items() if k.isdigit() and int(k) <= start}
    rows = rows[:start]
    if start:
        generator.load(out / "generator" / f"cycle-{start:03d}")
    ev = config.evaluate
    template = read_template(out)
    schedule = rates(config.schedule, config.loop.cycles)
    shown = recorded_rates(config.schedule, config.loop.cycles)  # metrics: cycle 1's too
    data = _data(config) if ev.train else None
    notify = on_event or (lambda e: None)
    with (
        CandidateStore(out / "candidates.sqlite") as store,
        evaluator(config) as pool,
    ):
        evaluation = Evaluation(pool, probe_source(), dict(input_shape=INPUT_SHAPE))
        archive = Archive(config)  # kept across cycles; on resume, refilled from the store once
        for earlier in range(1, start + 1):
            archive.admit(store.cycle_rows(earlier))
        for c in range(start + 1, config.loop.cycles + 1):
            began = time.time()
            rate = float(schedule[c - 1])
            refs = _references(store, c, config)
            work = CycleWork(store, evaluation, archive.codes, c, config, data, notify, Event)
            try:  # the sandbox runs earlier batches while the generator writes the next one
                _generate(store, generator, config, template, refs, c, rate, notify, work.step)
                work.finish()
            finally:
                work.close()
            selected = _select(store, c, config.loop.top_k)
            if selected and c == 1:  # what a failing refine restores (`refining`)
                _written(out / "generator", _save_generator, generator, out, 0)
            pairs = partial(_pairs, store)  # read again if a failed refine unselects some
            loss = refine_safely(generator, pairs, store, c, selected, out) if selected else None
            _written(out / "generator", _save_generator, generator, out, c)
            cycle_rows = store.cycle_rows(c)
            row = cycle_metrics(cycle_rows, archive.codes, archive.mapped(), c, rate, loss, config)
            row["mutation_rate"] = float(shown[c - 1])
            row["seconds"] = round(time.time() - began, 3)
            rows.append(row)
            _written(
                out / "metrics.parquet", write_parquet, out / "metrics.parquet", pd.DataFrame(rows)
            )
            digests[str(c)] = rows_digest(store.cycle_rows(c))
            state = {"completed": c, "digests": digests}
            _written(out / "state.json", write_json, out / "state.json", state)
            archive.admit(cycle_rows)  # judged against from the next cycle on
            notify(Event(c, "cycle", c, config.loop.cycles, row))
    return pd.DataFrame(rows)


def _save_generator(generator: TextGenerator, out: Path, c: int) -> None:
    """Save into a temporary directory, then rename it: a directory that exists is whole."""
    final = out / "generator" / f"cycle-{c:03d}"
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    generator.save(tmp)
    shutil.rmtree(final, ignore_errors=True)  # a re-run cycle (state.json still says c - 1)
    os.replace(tmp, final)


def _written(path: Path, write: Callable[..., object], *args: object) -> None:
    """`write(*args)`, a failing disk (full, read-only, I/O error) reported in one line."""
    try:
        write(*args)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError
        why = getattr(err, "strerror", None) or " ".join(str(err).split())[:120]
        raise StoreError(
            f"cannot write {path} ({why}); everything written before is kept: "
            "free the disk and --resume"
        ) from None


def evaluator(config: RealConfig):
    """Where candidates run: a warm local `SandboxPool`, or Ray tasks (same `map` interface)."""
    ev = config.evaluate
    limits = dict(timeout_s=ev.timeout_s, memory_mb=ev.memory_mb, isolation=ev.isolation)
    if ev.backend == "ray":
        from archrefine.sandbox.ray_backend import RayEvaluator

        resources = dict(num_cpus=ev.cpus_per_task, num_gpus=ev.gpus_per_task)
        return RayEvaluator(
            address=ev.ray_address or None, local_cpus=ev.workers, **resources, **limits
        )
    from archrefine.sandbox.pool import SandboxPool

    return SandboxPool(ev.workers, gpus=ev.gpus_per_task > 0, **limits)


# ---- steps -------------------------------------------------------------------------------------


def _references(store: CandidateStore, c: int, config: RealConfig) -> list[Reference]:
    """The latest selection with code short enough to show (`MAX_REFERENCE_CODE`), with
    scores, or KNOWN's sources before there is one."""
    for earlier in range(c - 1, 0, -1):
        chosen = [r for r in store.cycle_rows(earlier) if r["selected"]
                  and len(r["code"] or "") <= MAX_REFERENCE_CODE]  # fmt: skip
        if chosen:
            chosen.sort(key=lambda r: -(r["accuracy"] or 0.0))
            return [Reference(r["code"], r["accuracy"], r["params"], cid=r["id"]) for r in chosen]
    from archrefine.space import KNOWN, to_source

    return [Reference(to_source(seq), name=name) for name, seq in KNOWN.items()]


def _generate(store, generator, config, template, refs, c, rate, notify, after=None) -> None:
    """Fill the cycle's missing candidate slots, `BATCH` at a time, storing each batch at once
    and then calling `after()` (the overlap: scoring and evaluating what is stored so far).

    Slot i's prompt (its reference subset) and sampling seed depend only on (seed, cycle, i), so
    a resumed run asks for exactly the prompts an uninterrupted one would have.
    """
    g, n = config.generator, config.loop.population
    have = len(store.cycle_rows(c))
    temperature = g.temperature + (g.temperature_span * rate if np.isfinite(rate) else 0.0)
    sampling = Sampling(temperature, g.top_p, g.top_k, g.max_new_tokens, rate)
    notify(Event(c, "generate", have, n))
    check = prompt_check(generator, g.max_new_tokens)  # hf: drop references, never cut prompts
    shape = dict(input_shape=INPUT_SHAPE, classes=CLASSES)
    for first in range(have, n, BATCH):
        slots = list(range(first, min(first + BATCH, n)))
        fitted = [
            render_fitted(template, config.prompt, _pick(refs, config, c, i), fits=check, **shape)
            for i in slots
        ]
        prompts, chosen = [p for p, _ in fitted], [ch for _, ch in fitted]
        responses = _answers(generator, prompts, sampling, _seed(config.seed, c, first))
        for attempt in range(1, g.retries + 1):  # rejection: resample responses with no code
            again = [j for j, r in enumerate(responses) if code_or_error(r)[0] is None]
            if not again:
                break
            redo = _answers(
                generator,
                [prompts[j] for j in again],
                sampling,
                _seed(config.seed, c, first, attempt),
            )
            for j, r in zip(again, redo):
                responses[j] = r
        store.add_many(
            row(c, p, r, [x.cid for x in ch if x.cid is not None])
            for p, r, ch in zip(prompts, responses, chosen, strict=True)
        )
        notify(Event(c, "generate", slots[-1] + 1, n))
        if after is not None:
            after()


def _answers(generator: TextGenerator, prompts: list[str], sampling: Sampling, seed: int) -> list:
    """One response per prompt, or GeneratorUnavailable (the run stops cleanly, resumable)."""
    out = generator.generate(prompts, sampling, seed=seed)
    if not isinstance(out, list | tuple) or len(out) != len(prompts):
        got = len(out) if isinstance(out, list | tuple) else type(out).__name__
        raise GeneratorUnavailable(f"the generator answered {got} for {len(prompts)} prompts")
    return list(out)


def _pick(refs: list[Reference], config: RealConfig, c: int, i: int) -> list[Reference]:
    k = min(config.prompt.references, len(refs))
    rng = np.random.default_rng([config.seed, c, i])
    return [refs[j] for j in sorted(rng.choice(len(refs), size=k, replace=False))]


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class Archive:
    """What novelty is judged against when a cycle begins: KNOWN (if seeded) plus the earlier
    cycles' candidates that `loop.archive` admits, as MinHash sketches (`codes`) and as grounded
    sequences (those whose structure maps). Grown by one cycle at a time, never rebuilt."""

    def __init__(self, config: RealConfig) -> None:
        from archrefine.space import KNOWN

        nv = config.novelty
        self.policy = config.loop.archive
        self.codes = CodeNovelty(nv.shingle, nv.num_perm, nv.threshold, seed=1, twins=nv.twins)
        self._mapped = [list(seq) for seq in KNOWN.values()] if nv.seed_known else []
        if nv.seed_known:
            self.codes.seed_with_known()

    def admit(self, rows: list[dict]) -> None:
        """Add a finished cycle's candidates that the policy admits."""
        from archrefine.space import LENGTH, token_id

        for r in rows:
            if r["code"] is None or too_long(r["code"]) or not _admitted(r, self.policy):
                continue
            try:
                self.codes.add(f"cand:{r['id']}", r["code"])
            except Exception:  # noqa: BLE001 - no code tokens (comments only), or hostile text
                continue
            seq = mapped(r["code"])
            if seq is not None:
                self._mapped.append(seq + [token_id("none")] * (LENGTH - len(seq)))

    def mapped(self) -> np.ndarray:
        from archrefine.space import LENGTH

        return np.array(self._mapped, dtype=np.int16).reshape(-1, LENGTH)


def _admitted(row: dict, policy: str) -> bool:
    if policy == "selected":
        return bool(row["selected"])
    return policy == "all" or row["status"] == "ok"


def _select(store: CandidateStore, c: int, k: int) -> list[int]:
    """Top k of the cycle's valid, non-duplicate candidates by accuracy (then novelty, then
    order); with training off, by novelty."""
    rows = store.cycle_rows(c)
    store.mark_selected([r["id"] for r in rows], selected=False)  # a resumed cycle re-selects
    ok = [r for r in rows if r["status"] == "ok" and not r["near_duplicate"]]
    ok.sort(key=lambda r: (-(r["accuracy"] or 0.0), -(r["novelty"] or 0.0), r["id"]))
    chosen = [r["id"] for r in ok[:k]]
    store.mark_selected(chosen)
    return chosen


def _pairs(store: CandidateStore) -> list[tuple[str, str]]:
    """The cumulative fine-tuning set: every selected candidate's (prompt, response), in order."""
    return [(r["prompt"], r["response"]) for r in store.selected_rows()]


# ---- data and files ----------------------------------------------------------------------------


def _data(config: RealConfig):
    """The digits as numpy arrays (x, y, x_val, y_val) at the sandbox's input shape."""
    from archrefine.sandbox.training import TrainSettings, digits

    ev = config.evaluate
    settings = TrainSettings(seed=config.seed, max_train=ev.max_train or None)
    return tuple(t.numpy() for t in digits(settings))


def _read_rows(out: Path) -> list[dict]:
    path = out / "metrics.parquet"
    if not path.exists():
        return []
    from archrefine.core.store import read_metrics

    try:
        return read_metrics(path).to_dict("records")
    except StoreError as err:
        raise StoreError(
            f"{err}; nothing was changed: restore it from a backup, or start afresh with --force"
        ) from None
