"""The refinement cycle, batched across trials: propose → evaluate → record → select → refine.

Python loops run over cycles only; every step inside a cycle is one numpy operation over
`(trials, population, length)` arrays. This module does no I/O.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from archrefine.core import knn
from archrefine.core.config import Config, ScheduleConfig
from archrefine.core.metrics import METRICS  # noqa: F401  (public here too)
from archrefine.core.schedules import rates
from archrefine.sim.checkpoint import Checkpoint, Checkpointer, LoopState
from archrefine.sim.interventions import Steering
from archrefine.sim.landscapes import NKLandscape
from archrefine.sim.paper import PaperGenerator
from archrefine.sim.spaces import AbstractSpace, make_space

if TYPE_CHECKING:
    import pandas as pd

EXTRA = ("best_fitness", "mutation_rate", "pool_size", "bonus", "loss")


@dataclass(eq=False)
class Result:
    """A finished simulation: its config and one row per (trial, cycle), ordered by trial then
    cycle, as named numpy columns. `metrics` makes them a DataFrame on first use, so a command
    that only writes and prints them (`archrefine run`) never imports pandas (~0.25 s)."""

    config: Config
    columns: dict[str, np.ndarray]

    @functools.cached_property
    def metrics(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.columns)

    def mean(self) -> pd.DataFrame:
        """Per-cycle means over trials."""
        return self.metrics.groupby("cycle")[list(METRICS)].mean()

    def final(self) -> dict[str, float]:
        """The last cycle's mean of each metric over trials, NaN skipped (as in `mean`)."""
        last = self.columns["cycle"] == self.columns["cycle"].max()
        with warnings.catch_warnings():  # a metric with no value in the last cycle: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            return {k: float(np.nanmean(self.columns[k][last])) for k in METRICS}


class Archive:
    """Known architectures plus what earlier cycles added, per trial, in a preallocated array."""

    def __init__(self, known: np.ndarray, capacity: int):
        trials, n_known, d = known.shape
        self.rows = np.zeros((trials, n_known + capacity, d), dtype=known.dtype)
        self.rows[:, :n_known] = known
        self.filled = np.full(trials, n_known)

    def add(self, seqs: np.ndarray, mask: np.ndarray) -> None:
        """Append each trial's `seqs[t][mask[t]]` (order kept)."""
        order = np.argsort(~mask, axis=1, kind="stable")
        count = mask.sum(axis=1)
        t, j = np.nonzero(np.arange(seqs.shape[1])[None, :] < count[:, None])
        self.rows[t, self.filled[t] + j] = seqs[t, order[t, j]]
        self.filled += count


def simulate(
    config: Config,
    *,
    on_cycle: Callable[[int], None] | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    on_candidates: Callable[[int, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> Result:
    """Run `config.trials` independent refinement loops and return per-cycle metrics.

    All randomness comes from one `numpy.random.Generator` seeded with `config.seed`, so the same
    config gives the same result on every machine. With `checkpoint`, the loop's whole state is
    written there (atomically) every `config.checkpoint.every_s` seconds (0: every cycle) before
    `on_cycle` hears of it, after the last cycle, and when the loop stops by an exception (Ctrl-C
    included); with `resume` too, a run continues from that file where it exists
    (`archrefine.sim.checkpoint`), and its result is identical, bit for bit, to an uninterrupted
    run's. `on_candidates(cycle, valid, fitness, novelty)` sees each cycle's per-candidate
    `(trials, population)` arrays, which the metrics average away (calibration needs them); it
    must not change them.
    """
    rng = np.random.default_rng(config.seed)
    world = make_space(config)
    trials = config.trials
    score = make_fitness(config, world, rng)
    generator = make_generator(config, world, rng)
    known = world.known(trials, rng)
    saver = None
    if checkpoint is not None:
        every = config.checkpoint.every_s
        saver = Checkpointer(Checkpoint(checkpoint, config), every, config.loop.cycles)
    try:
        records = _cycles(
            config, world, generator, score, known, rng, on_cycle, saver, resume, on_candidates
        )
    except BaseException:
        if saver is not None:  # the last completed cycle, if the file is behind it
            with contextlib.suppress(Exception):  # the first error is the one to report
                saver.flush()
        raise
    finally:
        if hasattr(score, "close"):  # a worker pool (first-epoch training)
            score.close()
    return Result(config=config, columns=_columns(records, trials))


def _cycles(
    config,
    world,
    generator,
    score,
    known,
    rng,
    on_cycle,
    saver: Checkpointer | None = None,
    resume=False,
    on_candidates=None,
) -> list[dict]:
    """The cycle loop proper: propose → evaluate → record → select → refine."""
    loop, trials, n = config.loop, config.trials, config.loop.population
    d = known.shape[2]
    per_cycle = {"all": n, "valid": n, "selected": loop.top_k}[loop.archive]
    archive = Archive(known, per_cycle * loop.cycles)
    if not getattr(world, "canonical", False):  # novelty by the kNN of `core/knn.py`
        knn.preload(trials, n, known.shape[1] + per_cycle * (loop.cycles - 1), world.vocab)
    schedule = rates(config.schedule, loop.cycles)
    shown = recorded_rates(config.schedule, loop.cycles)
    pool = np.zeros((trials, loop.top_k, d), dtype=np.int16)
    pool_size = np.zeros(trials, dtype=int)
    # the state shares the archive's arrays, which `Archive.add` fills in place
    state = LoopState(0, pool, pool_size, archive.rows, archive.filled, known=known.shape[1])
    steer = Steering(config, world.length, world.vocab, generator)
    if resume and saver is not None and saver.checkpoint.path.exists():
        saver.checkpoint.restore(state, rng, steer.bound(generator), score)
    pool, pool_size, records = state.pool, state.pool_size, state.records
    beside = _Beside(trials * n * d >= BESIDE and not hasattr(score, "close"))
    # the generator's validity model, where the space asks it (the abstract space)
    costs = hasattr(generator, "start_costs") and type(world).validity is AbstractSpace.validity
    try:
        for c in range(state.cycle, loop.cycles):
            if beside.pool is not None and costs:
                generator.start_costs(beside.run, schedule[c])  # beside the proposal's draws
            cands = steer.propose(generator, pool, pool_size, n, schedule[c], loop.fresh_fraction)
            seqs = cands.seqs
            shared = _Shared(world, seqs, archive, loop.novelty_k, beside.pool is not None)
            scored = beside.run(_score, score, seqs, shared)
            valid = world.validity(cands, generator, rng)  # the cycle's only random draws
            diversity = world.diversity(seqs)
            shared.work()  # this thread takes the slices of novelty the helper has not
            fit, nov = scored(), shared.result()
            if on_candidates is not None:
                on_candidates(c + 1, valid, fit, nov)
            n_valid = valid.sum(axis=1)
            with np.errstate(invalid="ignore"):
                mean_fit = np.where(valid, fit, 0.0).sum(axis=1) / n_valid
            records.append(
                {
                    "validity": n_valid / n,
                    "novelty": nov.mean(axis=1),
                    "diversity": diversity,
                    "fitness": np.where(n_valid > 0, mean_fit, np.nan),
                    "best_fitness": np.where(valid, fit, -np.inf).max(axis=1),
                    "mutation_rate": np.full(trials, shown[c]),
                    "bonus": getattr(generator, "bonus", np.full(trials, np.nan)).copy(),
                }
            )
            new_pool, new_size = steer.select(seqs, fit, nov, valid, loop.top_k, rng)
            keep_old = new_size == 0  # nothing valid: the templates stay as they were
            pool = np.where(keep_old[:, None, None], pool, new_pool)
            pool_size = np.where(keep_old, pool_size, new_size)
            records[-1]["pool_size"] = pool_size.copy()
            if loop.archive == "selected":
                archive.add(new_pool, np.arange(loop.top_k)[None, :] < new_size[:, None])
            else:
                archive.add(seqs, valid if loop.archive == "valid" else np.ones_like(valid))
            generator.refine(*steer.training_set(new_pool, new_size, rng))
            records[-1]["loss"] = getattr(generator, "last_loss", np.full(trials, np.nan)).copy()
            if saver is not None:
                state.cycle, state.pool, state.pool_size = c + 1, pool, pool_size
                saver.cycle_done(state, rng, steer.bound(generator), score)
            if on_cycle is not None:
                on_cycle(c + 1)
    finally:
        beside.close()
    return records


BESIDE = 100_000  # candidate tokens per cycle from which `_Beside` uses a helper thread
SLICES = 16  # novelty's slices of trials (`_Shared`): small enough that the last one is short


class _Beside:
    """A helper thread that computes validity's costs while the loop's thread proposes, then
    fitness and novelty while it draws validity and computes diversity (and then shares the
    novelty: `_Shared`): none of these uses random numbers, each only reads arrays that nothing
    writes meanwhile, and numpy's loops and the numba kNN release the GIL, so on two cores the
    steps overlap and the numbers stay the same. Off (`use` false) where a cycle is too small
    to repay the hand-off, and for a fitness with its own worker pool."""

    def __init__(self, use: bool):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="archrefine-score") if use else None

    def run(self, fn: Callable, *args) -> Callable[[], tuple]:
        """Start `fn(*args)`; calling what comes back waits for its result (or raises its error)."""
        if self.pool is None:
            done = fn(*args)
            return lambda: done
        return self.pool.submit(fn, *args).result

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _score(score, seqs: np.ndarray, shared: _Shared) -> np.ndarray:
    fit = score(seqs)
    shared.work()
    return fit


class _Shared:
    """Novelty in slices of trials, which the helper thread (after fitness) and the loop's
    thread (after validity and diversity) take in turn until none is left, so neither waits
    long for the other. Each trial's novelty depends on its own rows only and every kNN method
    returns exact integer sums, so the numbers do not depend on who computed which slice. With
    `split` false, one slice."""

    def __init__(self, world, seqs: np.ndarray, archive: Archive, k: int, split: bool):
        trials = seqs.shape[0]
        parts = min(trials, SLICES) if split else 1
        self.bounds = np.linspace(0, trials, parts + 1).astype(int)
        self.parts: list[np.ndarray | None] = [None] * parts
        self.args = (world, seqs, archive, k)
        self.lock, self.taken = threading.Lock(), 0

    def _take(self) -> int:
        with self.lock:
            self.taken += 1
            return self.taken - 1

    def work(self) -> None:
        world, seqs, archive, k = self.args
        while (i := self._take()) < len(self.parts):
            a, b = self.bounds[i], self.bounds[i + 1]
            self.parts[i] = world.novelty(seqs[a:b], archive.rows[a:b], archive.filled[a:b], k)

    def result(self) -> np.ndarray:
        return np.concatenate(self.parts)


def recorded_rates(schedule: ScheduleConfig, cycles: int) -> np.ndarray:
    """The `mutation_rate` column per cycle: the schedule's rates, and at cycle 1, which samples
    from the prior and mutates nothing (its rate is NaN to the generators), the schedule's
    starting rate, the value in effect before its first step (as a learning-rate schedule's
    initial rate), so the column and fig. 4 start at cycle 1 like every other."""
    shown = rates(schedule, cycles).copy()
    shown[0] = rates(schedule, 2)[1]  # step 0's rate, which no later cycle count changes
    return shown


def make_generator(config: Config, world, rng: np.random.Generator):
    """The generator `config.generator.kind` names, sized for the space."""
    size = {"trials": config.trials, "length": world.length, "vocab": world.vocab, "rng": rng}
    if config.generator.kind == "learned":
        from archrefine.sim.learned import LearnedGenerator  # torch only when asked

        return LearnedGenerator(config.generator.learned, **size)
    return PaperGenerator(config.generator, initial=world.format(), **size)


def make_fitness(config: Config, world, rng: np.random.Generator) -> Callable:
    """The fitness function `(trials, n, d) → (trials, n)` that `config.fitness` names."""
    kind = config.fitness.kind
    if kind == "benchmark" or (kind == "auto" and world.measured):
        return world.fitness
    if kind == "first-epoch":
        from archrefine.sandbox.training import FirstEpochFitness

        f = config.fitness
        return FirstEpochFitness(
            seed=config.seed, epochs=f.epochs, workers=f.workers, max_train=f.max_train or None
        )
    return NKLandscape(config.trials, world.length, world.vocab, config.fitness.k, rng)


def _columns(records: list[dict[str, np.ndarray]], trials: int) -> dict[str, np.ndarray]:
    """The cycles' per-trial records as columns, one row per (trial, cycle) in that order."""
    cycles = len(records)
    data = {
        "trial": np.repeat(np.arange(trials), cycles),
        "cycle": np.tile(np.arange(1, cycles + 1), trials),
    }
    for key in (*METRICS, *EXTRA):  # records are cycle by cycle: transposed to trial by trial
        data[key] = np.stack([r[key] for r in records]).T.reshape(-1)
    best = data["best_fitness"]
    data["best_fitness"] = np.where(best == -np.inf, np.nan, best)
    return data
