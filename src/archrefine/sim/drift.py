"""Self-consumption drift: what a generator fine-tuned on its own outputs forgets.

The paper model's validity can only rise: the learned bonus never shrinks and the prior only
grows more familiar. A real loop can fall — Khalid et al. (2026) rise from 0.44 to 0.745 valid
at cycle 14 and end at 0.418, *below* where the model started, while mean accuracy, the share
of networks above 40% accuracy and the number of novel architectures admitted all stay high.
Ending below the start rules out an explanation by narrowing alone (a collapsed prior still
writes what it learned to write); it says the model lost some of the competence it had before
fine-tuning. docs/rise-and-fall.md gives the argument in full.

Mechanism. Each round of fine-tuning on the loop's own selections is one generation of a
self-consuming loop. Training on model outputs without fresh data adds an error every
generation that later generations inherit: Shumailov et al. (2024, *AI models collapse when
trained on recursively generated data*, Nature) show the approximation and sampling errors
compound; Alemohammad et al. (2024, *Self-consuming generative models go MAD*, ICLR) find that
without enough fresh real data quality (precision) or diversity must decline; Dohmatob et al.
(2024, *Model collapse demystified: the case of regression*, and *A tale of tails*, ICML)
derive that the test error of a model retrained on its predecessor's outputs grows *linearly*
in the number of generations. So the drift counts generations — full fine-tuning rounds,
weighted by how full the selection was, s = |selection| / k, as the other learning terms are —
and every written token's log-odds of being right lose `drift` per generation:

    g ← g + s,      logit of a written token −= drift · g

The bonus b, what the loop *teaches*, saturates (b ≤ 1); the drift, what it *erodes*, does not.
So validity rises while b grows faster than the drift and falls once b is complete: the peak
and the fall emerge from the two rates, no cycle or level is written into the model.
`generator.drift = 0` (the default) switches it off and leaves every result bit-identical.
"""

from __future__ import annotations

import numpy as np


class Drift:
    """Per-trial count of self-consumption generations and the log-odds they cost."""

    def __init__(self, rate: float, trials: int):
        self.rate = float(rate)
        self.generations = np.zeros(trials)

    def penalty(self) -> np.ndarray:
        """Log-odds every written token has lost, `(trials,)`."""
        return self.rate * self.generations

    def update(self, signal: np.ndarray) -> None:
        """One fine-tuning round on the trial's own selection, `signal` = |selection| / k."""
        self.generations = self.generations + signal

    def state(self) -> dict[str, np.ndarray]:
        return {"drift_generations": self.generations}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        generations = np.array(state["drift_generations"], dtype=float)
        if generations.shape != self.generations.shape:
            raise ValueError(
                f"drift state {generations.shape} does not fit {self.generations.shape}"
            )
        self.generations = generations


class SetGrowth:
    """`generator.bonus_growth = "set"`: the bonus a round teaches scales with the size of the
    accumulated fine-tuning set (docs/rise-and-fall.md, "A rise that accelerates").

    The paper model fine-tunes on the cycle's selection only, so every full round teaches the
    same `bonus_rate`. A loop that keeps every earlier selection in its fine-tuning set (as
    Khalid et al.'s LoRA rounds train on the growing set of admitted architectures) trains on
    more examples every round: with a fixed number of epochs, more gradient steps, so more is
    learned per round. Here the set holds every selection so far, n_t = sum of |selection_j|,
    and a round teaches b ← min(1, b + bonus_rate · n_t / k): the same step as before in the
    first round, t steps in round t when every selection is full, so the bonus grows
    quadratically in the cycle until it completes. The drift (what each round erodes) still
    counts rounds. Only the count matters here; which rows the prior learns from is the
    `intervention.accumulate` option's business.
    """

    def __init__(self, trials: int):
        self.size = np.zeros(trials)  # accumulated set size, in full selections (n_t / k)

    def update(self, signal: np.ndarray) -> np.ndarray:
        """Add this round's selection (`signal` = |selection| / k); the round's bonus step in
        units of `bonus_rate`, i.e. the accumulated set size n_t / k."""
        self.size = self.size + signal
        return self.size

    def state(self) -> dict[str, np.ndarray]:
        return {"set_size": self.size}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        size = np.array(state["set_size"], dtype=float)
        if size.shape != self.size.shape:
            raise ValueError(f"set-size state {size.shape} does not fit {self.size.shape}")
        self.size = size
