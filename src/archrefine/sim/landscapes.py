"""Fitness landscapes for the abstract space.

The NK landscape (Kauffman & Weinberger 1989) is the standard tunable-ruggedness model: position
i contributes f_i(x_i, x_{i+1}, ..., x_{i+K}) drawn uniformly from [0, 1], and fitness is the
mean contribution. K = 0 is a smooth, additive landscape; larger K adds epistasis and local optima.
Each trial draws its own landscape, so trial-to-trial spread includes landscape variation.
"""

from __future__ import annotations

import numpy as np


class NKLandscape:
    """Per-trial NK tables `(trials, d, V**(K+1))`, evaluated for whole batches at once."""

    def __init__(self, trials: int, length: int, vocab: int, k: int, rng: np.random.Generator):
        if problem := too_large(trials, length, vocab, k):
            raise ValueError(problem)
        self.k, self.vocab, self.length = k, vocab, length
        self.tables = rng.random((trials, length, vocab ** (k + 1)), dtype=np.float32)

    def __call__(self, seqs: np.ndarray) -> np.ndarray:
        """Fitness `(trials, n)` of `seqs (trials, n, d)`, in [0, 1]."""
        trials, n, d = seqs.shape
        cells = self.tables.shape[2]
        # flat index into the tables (< 200M entries: int32 holds it), one take instead of a
        # three-array fancy index
        index = (np.arange(trials * d, dtype=np.int32) * cells).reshape(trials, 1, d)
        index = index + seqs
        for j in range(1, self.k + 1):
            index += np.roll(seqs, -j, axis=2).astype(np.int32) * self.vocab**j
        return np.take(self.tables.reshape(-1), index).mean(axis=2, dtype=np.float64)


MAX_CELLS = 200_000_000  # NK table entries (float32: 800 MB) a run may draw


def too_large(trials: int, length: int, vocab: int, k: int) -> str:
    """Why NK tables of this size are refused ("" where they are not)."""
    cells = trials * length * vocab ** (k + 1)
    if cells <= MAX_CELLS:
        return ""
    return (
        f"fitness.k={k} with trials={trials} needs {cells:,} NK table entries, over "
        f"{MAX_CELLS:,}: use a smaller k or fewer trials"
    )
