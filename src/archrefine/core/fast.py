"""Compiled kernels (numba, the optional `fast` extra) for the simulator's inner loops.

Imported only through `kernels()`, which returns None where numba is missing, so nothing pays
numba's import unless it is used. Every kernel computes exactly what its numpy twin computes
(integer results, or the same float operations on the same values in the same order), so a
run's numbers never depend on whether numba is installed; `tests/test_knn.py` checks each pair.
Compiled code is cached on disk (`cache=True`): a later process loads it instead of compiling.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from archrefine.core import aot


def available() -> bool:
    """Whether numba can be imported (without importing it), and is not switched off with
    ARCHREFINE_NO_NUMBA=1 (for tests, and to measure the fallback)."""
    if os.environ.get("ARCHREFINE_NO_NUMBA"):
        return False
    return importlib.util.find_spec("numba") is not None


_LOADED: list[SimpleNamespace] = []  # the kernels, once built and called once
_LOCK = threading.Lock()


def loaded() -> bool:
    """Whether the kernels are loaded already (numba imported, its target initialized)."""
    return bool(_LOADED)


def kernels() -> SimpleNamespace | None:
    """The compiled kernels, or None without numba: the module `core/aot.py` built ahead of
    time where there is one (~1 ms), else numba's JIT, whose first call costs numba's import
    and start-up (~0.55 s of CPU on a 2-core AMD EPYC, docs/performance.md) and starts that
    module's build for later processes. Callers load them only for work that repays a JIT
    start (`archrefine.core.knn.choose`, `knn.preload`)."""
    if not _LOADED:
        if not available():
            return None
        with _LOCK:  # one load, also when two threads ask at once
            if not _LOADED:
                source = _source()
                compiled = aot.load(source)  # built ahead of time: no numba import at all
                if compiled is None:
                    compiled = _warm(_build(_import_numba()))
                    aot.start(source)  # for the next process
                _LOADED.append(compiled)
    return _LOADED[0]


def build_ahead() -> Path | None:
    """Build the ahead-of-time module here and now where it is missing (benchmarks do, before
    they time a process); its path, or None where numba is missing or AOT is switched off."""
    if not available() or not aot.enabled():
        return None
    path = aot.module_path(_source())
    if not path.exists():
        aot.build(_build(_import_numba()), path)
    return path


def _source() -> bytes:
    """This file, which holds the kernels' code: the ahead-of-time module's key."""
    with open(__file__, "rb") as f:
        return f.read()


def _import_numba():
    """numba, without the scipy it imports only to check its version (`numba/__init__.py`) and
    to learn whether BLAS is there for `np.dot` in compiled code
    (`numba.np.arraymath._check_blas`): ~0.15–0.3 s of CPU. None of these kernels uses
    BLAS, numba runs without scipy (it falls back to its own loops), and a process that has
    imported scipy already keeps it; the block lasts only for these imports."""
    if "scipy" in sys.modules or "numba" in sys.modules:
        import numba

        return numba
    sys.modules["scipy"] = None  # type: ignore[assignment]  # `import scipy` raises ImportError
    try:
        import numba
        import numba.np.arraymath  # noqa: F401  (the first compiled call would import it)
    finally:
        del sys.modules["scipy"]
    return numba


def _warm(compiled: SimpleNamespace) -> SimpleNamespace:
    """Call each kernel once on tiny inputs of the types the callers pass, so numba loads every
    compiled version from its cache now (the first call of each costs most of its start-up)."""
    words = np.zeros((1, 1, 2), np.uint64)
    compiled.knn_sums(words, words.reshape(1, 2, 1), np.ones(1, np.int64), 1, 15, 4096)
    compiled.sample_categorical(np.ones((1, 1, 2)), np.zeros((1, 1, 1)))
    one = np.zeros((1, 1, 1), np.int16)
    compiled.propose(np.ones((1, 1, 2)), np.zeros((1, 1, 1)), np.zeros((1, 1, 1)), 0.5,
                     np.zeros((1, 1), np.int64), one, np.zeros(1, np.int64))  # fmt: skip
    compiled.written_cost(np.ones((1, 1, 2)), one, np.ones((1, 1, 1), bool))
    compiled.token_counts(one, 2, np.ones((1, 1), bool))
    return compiled


def _build(numba) -> SimpleNamespace:
    jit = numba.njit(cache=True, nogil=True)
    low = np.uint64(0x7F7F7F7F7F7F7F7F)
    ones = np.uint64(0x0101010101010101)
    shift7, shift56 = np.uint64(7), np.uint64(56)

    @jit
    def knn_sums(queries, archive, filled, k, d, block):  # pragma: no cover - compiled
        """Sums of the min(k, filled[t]) smallest byte-Hamming distances, by a histogram of the
        d + 1 possible distances per query (counting selection: exact, no sort). Tokens are
        packed one per byte into uint64 words, queries `(T, n, W)`, archive word-major
        `(T, W, A)` so the loop over rows vectorizes, in blocks of `block` rows that every
        query scans while they are in cache; a byte of x = a XOR b is nonzero iff bit 7 of
        ((x & 0x7F..) + 0x7F..) | x is set, and multiplying the per-byte flags by 0x0101.. adds
        them up in the top byte."""
        trials, n, words = queries.shape
        out = np.zeros((trials, n), np.int64)
        hist = np.zeros((n, d + 1), np.int64)
        acc = np.empty(min(block, archive.shape[2]), np.uint64)
        for t in range(trials):
            f = filled[t]
            if f <= 0:
                continue
            hist[:, :] = 0
            for s in range(0, f, block):
                e = min(f, s + block)
                for j in range(n):
                    acc[: e - s] = 0
                    for w in range(words):
                        qw = queries[t, j, w]
                        row = archive[t, w, s:e]
                        for r in range(e - s):
                            x = qw ^ row[r]
                            acc[r] += ((((x & low) + low) | x) >> shift7) & ones
                    for r in range(e - s):
                        hist[j, (acc[r] * ones) >> shift56] += 1
            kk = min(k, f)
            for j in range(n):
                need, total, v = kk, 0, 0
                while need > 0:
                    c = min(hist[j, v], need)
                    total += c * v
                    need -= c
                    v += 1
                out[t, j] = total
        return out

    @jit
    def sample_categorical(cdf, u):  # pragma: no cover - compiled
        """Inverse-CDF draws: the number of cdf[t, i, v] < u for v < V - 1, counted as the numpy
        twin counts them (a branch-free count over the row, which vectorizes; a binary search
        was slower here, its branches unpredictable)."""
        trials, n, d = u.shape
        top = cdf.shape[2] - 1
        out = np.empty((trials, n, d), np.int16)
        for t in range(trials):
            for i in range(d):
                row = cdf[t, i]
                for j in range(n):
                    x = u[t, j, i]
                    c = 0
                    for v in range(top):
                        c += row[v] < x
                    out[t, j, i] = c
        return out

    @jit
    def propose(cdf, u, mutate_u, rate, pick, pool, fresh_rows):  # pragma: no cover - compiled
        """The paper generator's children in one pass (`PaperGenerator.propose`): row j of
        trial t is a fresh draw where j < fresh_rows[t], else its template `pool[t, pick]`
        with each position where mutate_u < rate replaced by a fresh draw. A draw is the
        inverse-CDF count of `sample_categorical`, made only where it is kept."""
        trials, n, d = u.shape
        top = cdf.shape[2] - 1
        seqs = np.empty((trials, n, d), np.int16)
        written = np.empty((trials, n, d), np.bool_)
        for t in range(trials):
            for j in range(n):
                fresh = j < fresh_rows[t]
                p = pick[t, j]
                for i in range(d):
                    if fresh or mutate_u[t, j, i] < rate:
                        x = u[t, j, i]
                        c = 0
                        for v in range(top):
                            c += cdf[t, i, v] < x
                        seqs[t, j, i] = c
                        written[t, j, i] = True
                    else:
                        seqs[t, j, i] = pool[t, p, i]
                        written[t, j, i] = False
        return seqs, written

    @jit
    def written_cost(cost, seqs, written):  # pragma: no cover - compiled
        """Per candidate, the sum over positions of cost[t, i, token] × written, left to right
        (as `paper.written_cost` adds them), an unwritten position multiplying its cost by 0
        (inf · 0 is NaN, as in numpy)."""
        trials, n, d = seqs.shape
        out = np.empty((trials, n))
        for t in range(trials):
            for j in range(n):
                s = cost[t, 0, seqs[t, j, 0]] * (1.0 if written[t, j, 0] else 0.0)
                for i in range(1, d):
                    s += cost[t, i, seqs[t, j, i]] * (1.0 if written[t, j, i] else 0.0)
                out[t, j] = s
        return out

    @jit
    def token_counts(seqs, vocab, mask):  # pragma: no cover - compiled
        """Per trial and position, how many of the rows where `mask` holds have each token
        (`metrics.token_counts`); a token outside [0, vocab) is an error, not a write."""
        trials, n, d = seqs.shape
        out = np.zeros((trials, d, vocab), np.int64)
        for t in range(trials):
            for j in range(n):
                if mask[t, j]:
                    for i in range(d):
                        v = seqs[t, j, i]
                        if v < 0 or v >= vocab:
                            raise ValueError("token_counts: a token is outside the vocabulary")
                        out[t, i, v] += 1
        return out

    return SimpleNamespace(
        knn_sums=knn_sums,
        sample_categorical=sample_categorical,
        propose=propose,
        written_cost=written_cost,
        token_counts=token_counts,
    )


def pack_bytes(x: np.ndarray, words: int) -> np.ndarray:
    """Tokens `(..., d)` (< 256) one per byte, zero-padded into `words` uint64 words."""
    out = np.zeros((*x.shape[:-1], 8 * words), np.uint8)
    out[..., : x.shape[-1]] = x
    return out.view(np.uint64)


if __name__ == "__main__":  # `aot.start`'s detached build
    if len(sys.argv) != 3 or sys.argv[1] != "--aot":
        sys.exit("usage: python -m archrefine.core.fast --aot PATH")
    aot.build(_build(_import_numba()), Path(sys.argv[2]))
