"""The real refinement loop: prompt → response → code → sandbox → novelty → select → refine.

Every candidate goes into the run's SQLite store (`candidates.sqlite`) the moment it exists, and
its outcome the moment the sandbox reports it, so a run that dies loses at most the evaluations
in flight. A cycle's steps are idempotent given the store: generation fills only the missing
candidate slots, evaluation runs only `pending` rows, selection and refinement are recomputed
from the rows. `state.json` names the last *completed* cycle, written after its generator state
(`generator/cycle-NNN/`) and metrics; `resume` continues from there.

Per-cycle metrics use the simulator's columns (one trial): validity = share of the population
that built, ran and had the right output shape; novelty = mean MinHash-Jaccard novelty of the
cycle's code against the archive as it stood when the cycle began; diversity = mean pairwise
MinHash-Jaccard distance within the cycle; fitness = mean held-out accuracy of the valid ones.
The structural yardstick shared with the simulator (`grounded_novelty`, `grounded_diversity`,
on the code mapped into the grounded vocabulary) sits beside them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from archrefine import metrics as simmetrics
from archrefine.candidates import CandidateStore
from archrefine.evaluate.code import CodeError, extract_code, fingerprint, static_check, to_tokens
from archrefine.evaluate.novelty_code import CodeNovelty
from archrefine.evaluate.sandbox import TrainSpec
from archrefine.generators.text import Sampling, TextGenerator
from archrefine.real.config import RealConfig
from archrefine.real.prompts import Reference, load_template, render
from archrefine.schedules import rates
from archrefine.store import StoreError, write_json, write_parquet

INPUT_SHAPE, CLASSES = (3, 32, 32), 10
BATCH = 8  # responses generated (and stored) per generator call
GROUNDED_K = 15  # neighbours of the grounded novelty, as the simulator's loop.novelty_k


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
    path = Path(out) / "state.json"
    if not path.exists():
        return 0
    try:
        return int(json.loads(path.read_text())["completed"])
    except (ValueError, KeyError, TypeError) as err:
        raise StoreError(f"{path}: not a readable loop state ({err})") from None


def run_loop(
    config: RealConfig,
    out: Path,
    generator: TextGenerator,
    *,
    on_event: Callable[[Event], None] | None = None,
) -> pd.DataFrame:
    """Run (or continue) the loop in `out` until `config.loop.cycles`; return the metrics."""
    out = Path(out)
    start = completed_cycles(out)
    if start:
        generator.load(out / "generator" / f"cycle-{start:03d}")
    ev = config.evaluate
    template = load_template(config.prompt.template)
    schedule = rates(config.schedule, config.loop.cycles)
    data = _data(config) if ev.train else None
    rows = _read_rows(out)[:start]
    notify = on_event or (lambda e: None)
    with (
        CandidateStore(out / "candidates.sqlite") as store,
        evaluator(config) as pool,
    ):
        archive = Archive(config)  # kept across cycles; on resume, refilled from the store once
        for earlier in range(1, start + 1):
            archive.admit(store.cycle_rows(earlier))
        for c in range(start + 1, config.loop.cycles + 1):
            began = time.time()
            rate = float(schedule[c - 1])
            refs = _references(store, c, config)
            _generate(store, generator, config, template, refs, c, rate, notify)
            _score_novelty(store, c, archive.codes, config)
            _evaluate(store, pool, c, config, data, notify)
            selected = _select(store, c, config.loop.top_k)
            pairs = _pairs(store)
            loss = generator.refine(pairs, c) if selected else None
            generator.save(out / "generator" / f"cycle-{c:03d}")
            cycle_rows = store.cycle_rows(c)
            row = _metrics(cycle_rows, archive.codes, archive.mapped(), c, rate, loss, config)
            row["seconds"] = round(time.time() - began, 3)
            rows.append(row)
            write_parquet(out / "metrics.parquet", pd.DataFrame(rows))
            write_json(out / "state.json", {"completed": c})
            archive.admit(cycle_rows)  # judged against from the next cycle on
            notify(Event(c, "cycle", c, config.loop.cycles, row))
    return pd.DataFrame(rows)


def evaluator(config: RealConfig):
    """Where candidates run: a warm local `SandboxPool`, or Ray tasks (same `map` interface)."""
    ev = config.evaluate
    limits = dict(timeout_s=ev.timeout_s, memory_mb=ev.memory_mb, isolation=ev.isolation)
    if ev.backend == "ray":
        from archrefine.evaluate.ray_backend import RayEvaluator

        resources = dict(num_cpus=ev.cpus_per_task, num_gpus=ev.gpus_per_task)
        return RayEvaluator(
            address=ev.ray_address or None, local_cpus=ev.workers, **resources, **limits
        )
    from archrefine.evaluate.pool import SandboxPool

    return SandboxPool(ev.workers, **limits)


# ---- steps -------------------------------------------------------------------------------------


def _references(store: CandidateStore, c: int, config: RealConfig) -> list[Reference]:
    """The latest non-empty selection (with scores), or KNOWN's sources before there is one."""
    for earlier in range(c - 1, 0, -1):
        chosen = [r for r in store.cycle_rows(earlier) if r["selected"]]
        if chosen:
            chosen.sort(key=lambda r: -(r["accuracy"] or 0.0))
            return [Reference(r["code"], r["accuracy"], r["params"], cid=r["id"]) for r in chosen]
    from archrefine.space import KNOWN, to_source

    return [Reference(to_source(seq), name=name) for name, seq in KNOWN.items()]


def _generate(store, generator, config, template, refs, c, rate, notify) -> None:
    """Fill the cycle's missing candidate slots, `BATCH` at a time, storing each batch at once.

    Slot i's prompt (its reference subset) and sampling seed depend only on (seed, cycle, i), so
    a resumed run asks for exactly the prompts an uninterrupted one would have.
    """
    g, n = config.generator, config.loop.population
    have = len(store.cycle_rows(c))
    temperature = g.temperature + (g.temperature_span * rate if np.isfinite(rate) else 0.0)
    sampling = Sampling(temperature, g.top_p, g.top_k, g.max_new_tokens, rate)
    notify(Event(c, "generate", have, n))
    for first in range(have, n, BATCH):
        slots = list(range(first, min(first + BATCH, n)))
        chosen = [_pick(refs, config, c, i) for i in slots]
        prompts = [
            render(template, config.prompt, ch, input_shape=INPUT_SHAPE, classes=CLASSES)
            for ch in chosen
        ]
        responses = generator.generate(prompts, sampling, seed=_seed(config.seed, c, first))
        for attempt in range(1, g.retries + 1):  # rejection: resample responses with no code
            again = [j for j, r in enumerate(responses) if _code_or_error(r)[0] is None]
            if not again:
                break
            redo = generator.generate(
                [prompts[j] for j in again], sampling, seed=_seed(config.seed, c, first, attempt)
            )
            for j, r in zip(again, redo):
                responses[j] = r
        store.add_many(
            _row(config, c, p, r, [x.cid for x in ch if x.cid is not None])
            for p, r, ch in zip(prompts, responses, chosen)
        )
        notify(Event(c, "generate", slots[-1] + 1, n))


def _pick(refs: list[Reference], config: RealConfig, c: int, i: int) -> list[Reference]:
    k = min(config.prompt.references, len(refs))
    rng = np.random.default_rng([config.seed, c, i])
    return [refs[j] for j in sorted(rng.choice(len(refs), size=k, replace=False))]


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _code_or_error(response: str) -> tuple[str | None, str]:
    try:
        return extract_code(response), ""
    except CodeError as err:
        return None, str(err)


def _row(config: RealConfig, c: int, prompt: str, response: str, parents: list[int]) -> dict:
    code, error = _code_or_error(response)
    row = dict(cycle=c, prompt=prompt, response=response, parent_ids=parents)
    if code is None:
        return row | dict(status="no_code", reason=error)
    problems = static_check(code)
    if problems:
        return row | dict(code=code, status="rejected", reason=problems[0])
    return row | dict(code=code, fingerprint=fingerprint(code).sha1)


class Archive:
    """What novelty is judged against when a cycle begins: KNOWN (if seeded) plus the earlier
    cycles' candidates that `loop.archive` admits, as MinHash sketches (`codes`) and as grounded
    sequences (those whose structure maps). Grown by one cycle at a time, never rebuilt."""

    def __init__(self, config: RealConfig) -> None:
        from archrefine.space import KNOWN

        nv = config.novelty
        self.policy = config.loop.archive
        self.codes = CodeNovelty(nv.shingle, nv.num_perm, nv.threshold, seed=1)
        self._mapped = [list(seq) for seq in KNOWN.values()] if nv.seed_known else []
        if nv.seed_known:
            self.codes.seed_with_known()

    def admit(self, rows: list[dict]) -> None:
        """Add a finished cycle's candidates that the policy admits."""
        from archrefine.space import LENGTH, token_id

        for r in rows:
            if r["code"] is None or not _admitted(r, self.policy):
                continue
            try:
                self.codes.add(f"cand:{r['id']}", r["code"])
            except ValueError:  # a block with no code tokens (comments only): nothing to match
                continue
            seq = _mapped(r["code"])
            if seq is not None:
                self._mapped.append(seq + [token_id("none")] * (LENGTH - len(seq)))

    def mapped(self) -> np.ndarray:
        from archrefine.space import LENGTH

        return np.array(self._mapped, dtype=np.int16).reshape(-1, LENGTH)


def _admitted(row: dict, policy: str) -> bool:
    if policy == "selected":
        return bool(row["selected"])
    return policy == "all" or row["status"] == "ok"


def _mapped(code: str) -> list[int] | None:
    try:
        return to_tokens(fingerprint(code))
    except CodeError:
        return None


def _score_novelty(store: CandidateStore, c: int, archive: CodeNovelty, config) -> None:
    """Novelty against the archive at the cycle's start; a near duplicate of the archive or of
    an earlier candidate of the same cycle is flagged (it is validated, not trained)."""
    nv = config.novelty
    seen = CodeNovelty(nv.shingle, nv.num_perm, nv.threshold, seed=1)
    for r in store.cycle_rows(c):
        if r["code"] is None or r["status"] == "rejected":
            continue
        try:
            dup = archive.is_near_duplicate(r["code"]) or seen.is_near_duplicate(r["code"])
            if r["novelty"] is None:
                store.update(r["id"], novelty=archive.score(r["code"]), near_duplicate=dup)
            seen.add(str(r["id"]), r["code"])
        except ValueError:  # no code tokens at all
            store.update(r["id"], status="rejected", reason="the code block has no code tokens")


def _evaluate(store, pool, c: int, config: RealConfig, data, notify) -> None:
    """Run every pending candidate in the sandbox, `workers × 2` at a time, storing outcomes as
    they come; near duplicates are built and run but not trained. (With Ray, `workers` is the
    local instance's CPUs; a cluster gets the same chunks, each chunk's tasks in parallel.)"""
    ev = config.evaluate
    rows = store.cycle_rows(c)
    todo = [r for r in rows if r["status"] == "pending"]
    total = sum(r["code"] is not None and r["status"] != "rejected" for r in rows)
    done = total - len(todo)
    notify(Event(c, "evaluate", done, total))
    spec = TrainSpec(ev.epochs, ev.lr, ev.batch_size, seed=config.seed) if ev.train else None
    step = ev.workers * 2
    for first in range(0, len(todo), step):
        chunk = todo[first : first + step]
        for dup in (False, True):
            part = [r for r in chunk if r["near_duplicate"] == dup]
            if not part:
                continue
            train = dict(train=spec, data=data) if spec is not None and not dup else {}
            outs = pool.map([r["code"] for r in part], input_shape=INPUT_SHAPE, **train)
            for r, o in zip(part, outs):
                store.update(
                    r["id"], status=o.status, reason=o.reason, params=o.params,
                    accuracy=o.accuracy, seconds=round(o.seconds, 3),
                )  # fmt: skip
        done += len(chunk)
        notify(Event(c, "evaluate", done, total))


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
    frame = store.to_frame()
    sel = frame[frame.selected]
    return list(zip(sel.prompt, sel.response))


# ---- metrics -----------------------------------------------------------------------------------


def _metrics(rows, archive, mapped, c, rate, loss, config: RealConfig) -> dict:
    n = config.loop.population
    coded = [r for r in rows if r["novelty"] is not None]
    ok = [r for r in rows if r["status"] == "ok"]
    acc = [r["accuracy"] for r in ok if r["accuracy"] is not None]
    counts = {s: sum(r["status"] == s for r in rows) for s in _COUNTED}
    row = dict(
        trial=0, cycle=c,
        validity=len(ok) / n,
        novelty=float(np.mean([r["novelty"] for r in coded])) if coded else np.nan,
        diversity=_code_diversity([r["code"] for r in coded], archive),
        fitness=float(np.mean(acc)) if acc else np.nan,
        best_fitness=float(np.max(acc)) if acc else np.nan,
        mutation_rate=rate,
        pool_size=sum(bool(r["selected"]) for r in rows),
        bonus=np.nan,
        loss=np.nan if loss is None else float(loss),
        duplicates=sum(bool(r["near_duplicate"]) for r in coded),
    )  # fmt: skip
    row |= {f"n_{s}": v for s, v in counts.items()}
    row |= _grounded([r["code"] for r in coded], mapped)
    return row


_COUNTED = ("ok", "invalid", "timeout", "crashed", "oom", "forbidden", "no_code", "rejected")


def _code_diversity(codes: list[str], archive: CodeNovelty) -> float:
    """Mean pairwise distance (1 − estimated Jaccard) among the cycle's code."""
    if len(codes) < 2:
        return np.nan
    sketches = np.stack([np.asarray(archive.sketch(code).hashvalues) for code in codes])
    same = (sketches[:, None, :] == sketches[None, :, :]).mean(axis=2)
    upper = np.triu_indices(len(codes), k=1)
    return float(1.0 - same[upper].mean())


def _grounded(codes: list[str], mapped_archive: np.ndarray) -> dict:
    """Novelty and diversity on the code mapped into the grounded vocabulary (the simulator's
    Hamming yardstick), and the share of code that maps at all."""
    from archrefine.space import LENGTH, VOCAB, token_id

    seqs = [s for s in (_mapped(code) for code in codes) if s is not None]
    out = dict(mapped=len(seqs) / len(codes) if codes else np.nan)
    if not seqs:
        return out | dict(grounded_novelty=np.nan, grounded_diversity=np.nan)
    arr = np.array([s + [token_id("none")] * (LENGTH - len(s)) for s in seqs], dtype=np.int16)
    filled = np.array([len(mapped_archive)])
    nov = simmetrics.novelty(arr[None], mapped_archive[None], filled, GROUNDED_K)
    div = simmetrics.diversity(arr[None], len(VOCAB)) if len(arr) > 1 else [np.nan]
    return out | dict(grounded_novelty=float(np.nanmean(nov)), grounded_diversity=float(div[0]))


# ---- data and files ----------------------------------------------------------------------------


def _data(config: RealConfig):
    """The digits as numpy arrays (x, y, x_val, y_val) at the sandbox's input shape."""
    from archrefine.evaluate.training import TrainSettings, digits

    ev = config.evaluate
    settings = TrainSettings(seed=config.seed, max_train=ev.max_train or None)
    return tuple(t.numpy() for t in digits(settings))


def _read_rows(out: Path) -> list[dict]:
    path = out / "metrics.parquet"
    if not path.exists():
        return []
    from archrefine.store import read_metrics

    return read_metrics(path).to_dict("records")
