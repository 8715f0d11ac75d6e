"""First-epoch accuracy as the fitness of grounded-space sequences (as in Khalid et al. 2026).

A network's held-out accuracy after one short epoch is a cheap proxy for how well it trains, and
it is a measurement of the network itself rather than of a made-up landscape. The data is
scikit-learn's bundled digits (1,797 8x8 images, shipped with the library, nothing downloaded),
upsampled to the spec's input, so any machine can run the real loop.

The networks come from `archrefine.space.build` on the project's own token sequences, checked
by `is_valid` first; they are not untrusted code, so they train in plain worker processes, not
in `evaluate/sandbox.py`, which is for code an LLM wrote.

Determinism: the split depends only on the run seed; the initial weights and dropout masks on
the run seed and the canonical architecture (never on call order, batch composition or worker
count); the data order on the run seed; every worker trains on one thread. So a network's
accuracy is one number per (seed, settings), and the cache can key on `canonical(seq)` alone.
One network's data, settings and training are `train_digits.py`; this module runs many.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from archrefine.core.store import atomic_write_text
from archrefine.sandbox.train_digits import (  # noqa: F401 - re-exported: these lived here
    DIGIT_CLASSES,
    HELD_OUT,
    Data,
    Tokens,
    TrainSettings,
    cost,
    digits,
    train_one,
    weight_seed,
)
from archrefine.space import (
    DEFAULT_SPEC,
    LENGTH,
    VOCAB,
    SpaceSpec,
    canonical,
    is_valid,
)

__all__ = ["HELD_OUT", "FirstEpochFitness", "TrainSettings", "cost", "digits", "train_one"]

_FORMAT = "archrefine.first-epoch-cache"


_WORKER: dict[str, Any] = {}


def _cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return max(os.cpu_count() or 1, 1)


def _init_worker(settings: TrainSettings) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER["settings"], _WORKER["data"] = settings, digits(settings)


def _train_in_worker(tokens: Tokens) -> float:
    return _checked(tokens, _WORKER["settings"], _WORKER["data"])


def _train_group(group: list[Tokens]) -> list[float]:
    """One task, several small networks: one round trip instead of one each."""
    return [_checked(t, _WORKER["settings"], _WORKER["data"]) for t in group]


def pack(costs: Sequence[float], workers: int, per_worker: int = 4) -> list[list[int]]:
    """Indices of `costs` (costliest first) grouped into tasks: a network costing at least a
    `1 / (per_worker · workers)` share of the total is a task alone; the small ones are packed,
    in order, into tasks of about that share, so workers balance and small networks do not pay
    a round trip each."""
    share = sum(costs) / max(per_worker * workers, 1)
    groups: list[list[int]] = []
    load = math.inf
    for i, c in enumerate(costs):
        if c >= share or load + c > share:
            groups.append([])
            load = 0.0
        groups[-1].append(i)
        load += c
    return groups


def _pid(pause: float) -> int:
    time.sleep(pause)  # long enough for another ready worker to take the next task
    return os.getpid()


def _checked(tokens: Tokens, settings: TrainSettings, data: Data) -> float:
    try:
        return train_one(tokens, settings, data)
    except Exception as err:  # a valid network failed to train: name it, in one line
        words = " ".join(VOCAB[t] for t in tokens)
        message = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        raise RuntimeError(f"training [{words}] failed: {message}") from None


class FirstEpochFitness:
    """Held-out digits accuracy after `epochs` epochs (default 1), for token sequences.

    Call it on an int array `(n, LENGTH)` or `(trials, n, LENGTH)`: the result has the leading
    shape, floats in [0, 1], NaN for sequences `is_valid` rejects (those are never built).
    Sequences with the same `canonical` form are one network: trained once per call and, with
    `cache=True`, once per object (`save`/`load` carry the cache across runs). Distinct
    uncached networks train in `workers` processes (0: one per core; costly networks one per
    task, small ones packed several to a task, `pack`) (forkserver, else spawn: never forked from
    a process that may hold torch threads; one thread each, torch imported once per worker,
    kept alive between calls; `close()` or a `with` block ends them), or in this process when
    `workers=1`. Scripts using workers need an `if __name__ == "__main__"` guard, as with any
    spawned pool. The networks are the project's own (`build` on checked sequences), not
    untrusted code, so no sandbox is involved. `max_train` caps the training images (stratified) to
    make evaluation cheaper; the 450 held-out images are always all scored.

    Example
    -------
    >>> with FirstEpochFitness(workers=2, max_train=300) as fit:  # doctest: +SKIP
    ...     acc = fit(np.array([KNOWN["mlp"], KNOWN["vgg"]]))
    """

    def __init__(
        self,
        spec: SpaceSpec = DEFAULT_SPEC,
        *,
        workers: int = 0,
        seed: int = 0,
        epochs: int = 1,
        batch_size: int = 32,
        lr: float = 1e-3,
        max_train: int | None = None,
        cache: bool = True,
    ) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise ValueError(f"workers: {workers!r} is not an integer >= 0 (0: every core)")
        workers = workers or _cores()
        self.settings = TrainSettings(spec, seed, epochs, batch_size, lr, max_train)
        self.workers = workers
        self.use_cache = bool(cache)
        self.trained = 0  # networks trained by this object
        self.hits = 0  # valid sequences answered from the cache
        self._cache: dict[Tokens, float] = {}
        self._data: Data | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._finalizer: weakref.finalize | None = None

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"FirstEpochFitness(workers={self.workers}, seed={s.seed}, epochs={s.epochs}, "
            f"max_train={s.max_train}, cached={len(self._cache)})"
        )

    def __call__(self, seqs: object) -> np.ndarray:
        arr = np.asarray(seqs)
        if arr.ndim < 1 or arr.shape[-1] != LENGTH or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"expected integer sequences of shape (..., {LENGTH}), got {arr.shape}"
            )
        rows = arr.reshape(-1, LENGTH)
        valid = is_valid(rows, self.settings.spec)
        keys = {i: canonical(rows[i]) for i in np.flatnonzero(valid).tolist()}
        known = self._cache if self.use_cache else {}
        todo = sorted({k for k in keys.values() if k not in known})
        todo.sort(key=lambda k: -cost(k, self.settings.spec))  # results do not depend on order
        self.hits += sum(k in known for k in keys.values())
        found = dict(zip(todo, self._train(todo), strict=True))
        self.trained += len(todo)
        if self.use_cache:
            self._cache.update(found)
        out = np.full(len(rows), np.nan)
        for i, k in keys.items():
            out[i] = found[k] if k in found else known[k]
        return out.reshape(arr.shape[:-1])

    def _train(self, todo: Sequence[Tokens]) -> list[float]:
        if not todo:
            return []
        if self.workers == 1:
            return self._train_here(todo)
        pool = self._executor()
        groups = pack([cost(k, self.settings.spec) for k in todo], self.workers)
        try:
            futures = [pool.submit(_train_group, [todo[i] for i in g]) for g in groups]
            out = [math.nan] * len(todo)
            for g, fut in zip(groups, futures, strict=True):
                for i, acc in zip(g, fut.result(), strict=True):
                    out[i] = acc
            return out
        except BrokenProcessPool:
            self.close()
            raise

    def _train_here(self, todo: Sequence[Tokens]) -> list[float]:
        import torch

        data = self._local_data()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in the workers: the same arithmetic, the same numbers
        try:
            return [_checked(t, self.settings, data) for t in todo]
        finally:
            torch.set_num_threads(threads)

    def _local_data(self) -> Data:
        if self._data is None:
            self._data = digits(self.settings)
        return self._data

    def start(self) -> None:
        """Start the workers now and return once every one has imported torch and loaded the
        data (otherwise the first calls do this), so that later calls time only training."""
        if self.workers == 1:
            self._local_data()
            return
        pool, ready = self._executor(), set()
        while len(ready) < self.workers:
            ready.update(pool.map(_pid, [0.01] * self.workers))

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=mp.get_context(method),
                initializer=_init_worker,
                initargs=(self.settings,),
            )
            self._finalizer = weakref.finalize(self, self._pool.shutdown, cancel_futures=True)
        return self._pool

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones); the cache is kept."""
        if self._finalizer is not None:
            self._finalizer()
        self._pool = self._finalizer = None

    def __enter__(self) -> FirstEpochFitness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def entries(self) -> dict[Tokens, float]:
        """A copy of the cache: canonical architecture -> accuracy."""
        return dict(self._cache)

    def state(self) -> list[list]:
        """The cache as JSON values, `[[tokens, accuracy], ...]` (a simulation checkpoint)."""
        return [[list(k), v] for k, v in sorted(self._cache.items())]

    def load_state(self, entries: list[list]) -> None:
        """Merge a cache that `state` returned."""
        self._cache.update({tuple(int(t) for t in k): float(v) for k, v in entries})

    def save(self, path: str | os.PathLike) -> None:
        """Write the cache and the settings it holds for as JSON, atomically (a reader sees
        the old file or the new one, never half of one)."""
        path = Path(path)
        doc = {
            "format": _FORMAT,
            "version": 1,
            "settings": _jsonable(self.settings),
            "entries": [[list(k), v] for k, v in sorted(self._cache.items())],
        }
        atomic_write_text(path, json.dumps(doc))

    def load(self, path: str | os.PathLike) -> int:
        """Merge a cache written by `save` under the same settings; returns entries read.
        Raises ValueError, in one line, naming the first setting that differs."""
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a readable fitness cache ({err})") from None
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a fitness cache written by FirstEpochFitness.save")
        saved = doc.get("settings") or {}
        for name, value in _jsonable(self.settings).items():
            if saved.get(name) != value:
                theirs = saved.get(name)
                raise ValueError(f"{path}: written with {name}={theirs!r}, this run has {value!r}")
        entries = {tuple(int(t) for t in k): float(v) for k, v in doc["entries"]}
        self._cache.update(entries)
        return len(entries)


def _jsonable(settings: TrainSettings) -> dict[str, Any]:
    """The settings as JSON values (the spec as a dict), so a saved file compares equal."""
    return json.loads(json.dumps(settings.as_dict()))
