"""Run named conditions of an experiment, deduplicated and in parallel processes.

An experiment is a base config plus named overrides. Every condition uses the base seed (common
random numbers), so differences between conditions are not differences between random streams;
conditions whose resolved configs coincide are simulated once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, TypeVar

import pandas as pd

from archrefine.core.config import Config, ConfigError
from archrefine.sim.loop import simulate

Plan = dict[str, dict[str, dict]]  # experiment → condition → dotted overrides
Item = TypeVar("Item")
Result = TypeVar("Result")


def _run(config: Config) -> pd.DataFrame:
    return simulate(config).metrics


def run_plan(
    base: Config,
    plan: Plan,
    *,
    workers: int | None = None,
    on_done: Callable[[], None] | None = None,
) -> pd.DataFrame:
    """Simulate every (experiment, condition) of `plan`; return one long DataFrame.

    Columns: experiment, condition, trial, cycle, then the loop's metrics.
    """
    configs = {
        (exp, cond): base.with_overrides(over)
        for exp, conds in plan.items()
        for cond, over in conds.items()
    }
    unique: dict[str, Config] = {}
    for config in configs.values():
        unique.setdefault(config.model_dump_json(), config)
    if workers is not None and workers < 1:
        raise ConfigError(f"workers: {workers} is not at least 1")
    workers = min(workers or os.cpu_count() or 1, len(unique))  # never more than the jobs
    results: dict[str, pd.DataFrame] = {}
    if workers <= 1:
        for key, config in unique.items():
            results[key] = _run(config)
            if on_done:
                on_done()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {key: pool.submit(_run, config) for key, config in unique.items()}
            for key, future in futures.items():
                results[key] = future.result()
                if on_done:
                    on_done()
    frames = []
    for (exp, cond), config in configs.items():
        frame = results[config.model_dump_json()].copy()
        frame.insert(0, "condition", cond)
        frame.insert(0, "experiment", exp)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def count_unique(base: Config, plan: Plan) -> int:
    return len(
        {
            base.with_overrides(over).model_dump_json()
            for conds in plan.values()
            for over in conds.values()
        }
    )


def each_in_processes(
    fn: Callable[[Any], tuple],
    items: Sequence[Item],
    arg: Callable[[Item], Any],
    finish: Callable[..., None],
    workers: int,
) -> None:
    """Call `fn(arg(item))` for every item, in `workers` fresh processes (forkserver where the
    platform has it: no inherited state), and `finish(item, *result)` here as each one ends, so
    results are stored as they come and an interrupted study keeps what finished."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            finish(item, *fn(arg(item)))
        return
    import multiprocessing as mp

    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    context, workers = mp.get_context(method), min(workers, len(items))  # no idle processes
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending = {pool.submit(fn, arg(item)): item for item in items}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    finish(pending.pop(future), *future.result())
        finally:
            for future in pending:
                future.cancel()


def in_child(fn: Callable[..., Result], *args: Any) -> Result:
    """`fn(*args)` in one short-lived process: what it imports and allocates leaves with that
    process, so the caller's peak memory does not grow by it. Forked where the platform can
    (the child inherits `args`, nothing is pickled but the result); elsewhere, in this process."""
    with forked_pool(1, [(fn, args)]) as pool:
        if pool is None:
            return fn(*args)
        return pool.submit(call_held, 0).result()


_HELD: list[tuple[Callable, tuple]] = []  # a forked pool's calls, inherited (never pickled)


@contextmanager
def forked_pool(workers: int, calls: list[tuple[Callable, tuple]]) -> Iterator[Any]:
    """A pool of `workers` forked processes that hold `calls` (`call_held(i)` runs the i-th) as
    they were when it started: large arguments reach them by fork, not through a pipe, so
    neither this process nor the children keep a pickled copy. None where fork is missing."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        yield None
        return
    context = mp.get_context("fork")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_hold, initargs=(calls,)
    ) as pool:
        yield pool


def _hold(calls: list[tuple[Callable, tuple]]) -> None:
    _HELD[:] = calls


def call_held(i: int) -> Any:
    """The i-th call a `forked_pool` holds, in one of its processes."""
    fn, args = _HELD[i]
    return fn(*args)
