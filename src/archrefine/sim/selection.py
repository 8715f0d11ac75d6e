"""Selection: which candidates become the next cycle's templates and fine-tuning set."""

from __future__ import annotations

import numpy as np


def top_k(
    seqs: np.ndarray, score: np.ndarray, valid: np.ndarray, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The k best valid candidates of each trial by `score`; ties are broken at random.

    Returns `pool (trials, k, d)` with the selection in its first `size[t]` rows, best first, and
    `size (trials,) = min(k, valid count)`. Invalid candidates are never selected: code that does
    not run teaches nothing but its own failure.
    """
    trials, n, _ = seqs.shape
    jitter = rng.random((trials, n))  # random tie-break
    keyed = np.where(valid, score, -np.inf)
    order = np.lexsort((jitter, -keyed), axis=1)[:, :k]
    pool = np.take_along_axis(seqs, order[..., None], axis=1)
    size = np.minimum(valid.sum(axis=1), k)
    return pool, size


def scored(
    fit: np.ndarray, nov: np.ndarray, kind: str = "top-k", weight: float = 0.0
) -> np.ndarray:
    """The score selection ranks by: fitness, or with `kind = "novelty"` fitness + λ·novelty
    (Lehman & Stanley 2011), so a candidate far from the archive can outrank a fitter copy of
    what is known. With λ = 0 (or top-k) it is the fitness array itself, so top-k is unchanged."""
    if kind != "novelty" or weight == 0:
        return fit
    return fit + weight * np.nan_to_num(nov, nan=0.0)
