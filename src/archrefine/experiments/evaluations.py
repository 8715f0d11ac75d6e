"""Memoized, optionally parallel evaluations of a deterministic objective (used by `calibrate`).

`least_squares` asks for its finite-difference Jacobian's columns as one batch (its `workers`
map); each column is an independent simulation, so a process pool computes them at once, and
several optimizer starts can share the pool from threads. Every point is computed once, in
whichever process, and the objective is deterministic (common random numbers, one torch thread
per evaluation), so the fit is the same number for any worker count. `FitStart` is one start's
view of the shared evaluations; it skips the Jacobian that only ends up in a result.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import numpy as np


def default_workers() -> int:
    """The cores this process may run on (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return max(os.cpu_count() or 1, 1)


class Evaluations:
    """`fn(u)` memoized on the bytes of `u`; with `workers > 1`, computed in worker processes.

    `fn` must be picklable (a module-level function or an instance of a module-level class) when
    `workers > 1`. `on_evaluation(n)` sees the running count of distinct points, in the order
    they are first asked for. `same_as(u, point, value)`, if given, may say that a finished
    point's value is also `u`'s (the objective knows when two points run the same simulation);
    `u` then costs nothing and is not counted. `preload` names modules the workers need (torch,
    for the learned generator): the fork server imports them once and every worker starts with
    them, instead of each importing them itself. Use as a context manager so the workers end.
    """

    def __init__(
        self,
        fn: Callable[[np.ndarray], Any],
        workers: int = 1,
        on_evaluation: Callable[[int], None] | None = None,
        same_as: Callable[[np.ndarray, np.ndarray, Any], bool] | None = None,
        preload: Sequence[str] = (),
    ) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers: {workers!r} is not an integer >= 1")
        self.fn, self.workers, self.on_evaluation = fn, workers, on_evaluation
        self.same_as, self.preload = same_as, list(preload)
        self.count = 0
        self._futures: dict[bytes, Future] = {}
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def future(self, u: np.ndarray) -> Future:
        """The (possibly running) evaluation at `u`, started now if it is new."""
        u = np.array(u, dtype=float)
        key = u.tobytes()
        with self._lock:
            if key in self._futures:
                return self._futures[key]
            if (done := self._known(u)) is not None:
                self._futures[key] = done
                return done
            self.count += 1
            if self.on_evaluation is not None:
                self.on_evaluation(self.count)
            fut = self._executor().submit(self.fn, u) if self.workers > 1 else Future()
            self._futures[key] = fut
        if self.workers == 1:  # in this process, outside the lock
            try:
                fut.set_result(self.fn(u))
            except BaseException as err:
                fut.set_exception(err)
        return fut

    def _known(self, u: np.ndarray) -> Future | None:
        """A finished point whose value `same_as(u, point, value)` says is also `u`'s."""
        if self.same_as is None:
            return None
        for key, fut in self._futures.items():
            ok = fut.done() and fut.exception() is None
            if ok and self.same_as(u, np.frombuffer(key), fut.result()):
                return fut
        return None

    def __call__(self, u: np.ndarray) -> Any:
        return self.future(u).result()

    def map(self, func: Callable[[np.ndarray], Any], xs: Iterable[np.ndarray]) -> list[Any]:
        """A map-like for `least_squares(workers=...)`: start every point's evaluation, then
        apply `func` (scipy's wrapper, which calls back into this memo) point by point."""
        xs = list(xs)
        for x in xs:
            self.future(x)
        return [func(x) for x in xs]

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:  # never fork a process that may hold torch threads
            method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            context = mp.get_context(method)
            if method == "forkserver" and self.preload:  # the server only imports: no threads
                home = getattr(self.fn, "__module__", None)  # the objective's own module
                context.set_forkserver_preload([m for m in (home, *self.preload) if m])
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Evaluations:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FitStart:
    """One `least_squares` start over shared `Evaluations`: its objective and its `workers` map.

    `least_squares` computes a Jacobian after every accepted step, also after the step that spends
    the last of its `max_nfev` function evaluations; that Jacobian only ends up in the result
    (`fit.jac`), and a fit with several starts reads it only for the start it keeps. So once
    this start has asked for `max_nfev` points of its own, a Jacobian's columns are not computed
    (zeros stand in: they cannot change the fit's x, cost or residuals, only `fit.jac`,
    `fit.grad` and `fit.status`) and `skipped` says so; the caller computes the kept start's
    Jacobian afterwards, the same numbers. Use `map` only with scipy >= 1.16, which sends
    every finite-difference column (and nothing else) through it.
    """

    def __init__(self, fun: Callable[[np.ndarray], np.ndarray], evals: Evaluations, max_nfev: int):
        self.fun, self.evals, self.max_nfev = fun, evals, max_nfev
        self.calls, self.skipped = 0, False
        self._columns = False  # inside `map`: the objective is asked for a Jacobian's column
        self._size = 0

    def __call__(self, u: np.ndarray) -> np.ndarray:
        if not self._columns:
            self.calls += 1
        out = self.fun(u)
        self._size = len(out)
        return out

    def map(self, func: Callable[[np.ndarray], Any], xs: Iterable[np.ndarray]) -> list[Any]:
        """`Evaluations.map` for a Jacobian's columns, or zeros once the budget is spent."""
        xs = list(xs)
        if self.calls >= self.max_nfev:  # no step will follow: only the result would read it
            self.skipped = True
            return [np.zeros(self._size) for _ in xs]
        self._columns = True
        try:
            return self.evals.map(func, xs)
        finally:
            self._columns = False
