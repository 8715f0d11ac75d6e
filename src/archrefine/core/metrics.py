"""Population metrics, batched over trials: diversity and kNN novelty on normalized Hamming.

Arrays are `(trials, n, d)` integer token sequences. Every function has a brute-force twin in the
tests; these versions exist because the loop calls them thousands of times.
"""

from __future__ import annotations

import numpy as np

from archrefine.core import fast, knn

METRICS = ("validity", "novelty", "diversity", "fitness")  # the per-cycle columns


def diversity(seqs: np.ndarray, vocab: int) -> np.ndarray:
    """Mean pairwise normalized Hamming distance within each trial's population, O(n·d).

    Two sequences agree at position i iff they hold the same token there, so the number of agreeing
    pairs at i is sum_v c_iv (c_iv - 1) / 2 over the token counts c_iv; no pair is ever formed.
    """
    trials, n, d = seqs.shape
    if n < 2:
        return np.zeros(trials)
    counts = token_counts(seqs, vocab)  # (trials, d, vocab)
    agree = (counts * (counts - 1)).sum(axis=(1, 2)) / 2
    pairs = n * (n - 1) / 2
    return 1.0 - agree / (pairs * d)


def token_counts(seqs: np.ndarray, vocab: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-trial, per-position token counts `(trials, d, vocab)` with one bincount.

    `mask (trials, n)` restricts the count to the rows where it is true.
    """
    trials, n, d = seqs.shape
    if fast.loaded() and seqs.dtype == np.int16:  # the same counts, compiled (`core/fast.py`)
        keep = np.ones((trials, n), bool) if mask is None else np.ascontiguousarray(mask, bool)
        counts = fast.kernels().token_counts(np.ascontiguousarray(seqs), vocab, keep)
        return counts if mask is None else counts.astype(float)
    offset = (np.arange(trials)[:, None, None] * d + np.arange(d)[None, None, :]) * vocab
    flat = (seqs.astype(np.int64) + offset).ravel()
    weights = None if mask is None else np.repeat(mask.astype(float).ravel(), d)
    counts = np.bincount(flat, weights=weights, minlength=trials * d * vocab)
    return counts.reshape(trials, d, vocab)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances `(trials, n, m)` between `a (trials, n, d)` and `b (trials, m, d)`.

    One position at a time, on position-major contiguous copies, accumulating into the smallest
    integer type that holds d: memory stays at trials·n·m bytes, not ·d, and each pass streams.
    """
    small = max(int(a.max(initial=0)), int(b.max(initial=0))) < 128
    kind = np.int8 if small else np.int32
    a_t = np.ascontiguousarray(np.moveaxis(a, 2, 0), dtype=kind)
    b_t = np.ascontiguousarray(np.moveaxis(b, 2, 0), dtype=kind)
    out = np.zeros(
        (a.shape[0], a.shape[1], b.shape[1]), dtype=np.uint8 if a.shape[2] < 255 else np.int32
    )
    differ = np.empty(out.shape, dtype=bool)
    for i in range(a.shape[2]):
        np.not_equal(a_t[i][:, :, None], b_t[i][:, None, :], out=differ)
        out += differ
    return out


def novelty(seqs: np.ndarray, archive: np.ndarray, filled: np.ndarray, k: int) -> np.ndarray:
    """Mean normalized Hamming distance to the k nearest archive members (Lehman & Stanley 2011).

    `archive (trials, A, d)` is valid in its first `filled[t]` rows for trial t; k shrinks to the
    archive size when the archive is smaller. Returns `(trials, n)`; NaN where the archive is empty.
    Computed exactly by `archrefine.core.knn` with the measured `auto` pick of method.
    """
    return knn.novelty(seqs, archive, filled, k)
