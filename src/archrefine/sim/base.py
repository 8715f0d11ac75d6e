"""The generator role: propose candidates from a template pool, learn from a selection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Candidates:
    """One cycle's proposals: `seqs (trials, n, d)` and `written`, true where a token was newly
    written rather than copied from a template (what can introduce an error)."""

    seqs: np.ndarray
    written: np.ndarray


class Generator(Protocol):
    """Batched over trials: every array's first axis is the trial.

    `pool (trials, k, d)` holds each trial's templates in its first `pool_size[t]` rows.
    """

    def propose(
        self, pool: np.ndarray, pool_size: np.ndarray, n: int, rate: float, fresh: float
    ) -> Candidates:
        """Return `(trials, n, d)` candidates: mutated templates at `rate`, plus fresh samples."""
        ...

    def validity(self, cands: Candidates) -> np.ndarray | None:
        """The generator's own probability that each candidate is valid, or None to defer to
        the space (a grounded space checks real validity)."""
        ...

    def refine(self, pool: np.ndarray, pool_size: np.ndarray) -> None:
        """Fine-tune on the selection (`pool_size[t]` rows of `pool`, possibly none)."""
        ...
