"""A per-candidate implementation of the paper model's cycle: the model's reference twin.

One trial at a time, one candidate at a time, one token at a time (`rng.choice` per token),
written for clarity, not speed. `tests/test_reference.py` checks that the batched simulator
agrees with it statistically (the two draw random numbers in different orders, so they agree in
distribution, not bit for bit). It is slower than what a user would write with an evolutionary
library: the speed peer of `benchmarks/reproduce.py` is `peer_deap.py`; the in-process ratio
against this loop (the old "267×") is printed there with this label.
"""

from __future__ import annotations

import numpy as np

from archrefine.core.config import Config
from archrefine.core.schedules import rates


def run_trial(config: Config, rng: np.random.Generator) -> list[dict[str, float]]:
    g, loop, space = config.generator, config.loop, config.space
    d, vocab, n, k = space.length, space.vocab, loop.population, loop.top_k
    table = rng.random((d, vocab ** (config.fitness.k + 1)))
    archive = [rng.integers(0, vocab, d) for _ in range(space.known)]
    prior = np.full((d, vocab), 1.0 / vocab)
    bonus = 0.0
    pool: list[np.ndarray] = []
    schedule = rates(config.schedule, loop.cycles)
    out = []

    def fitness(x: np.ndarray) -> float:
        total = 0.0
        for i in range(d):
            idx = sum(int(x[(i + j) % d]) * vocab**j for j in range(config.fitness.k + 1))
            total += table[i, idx]
        return total / d

    def sample_token(i: int, rate: float) -> int:
        # decoding at temperature tau: probabilities proportional to prior ** (1 / tau)
        tau = g.temperature + (g.temperature_span * rate if np.isfinite(rate) else 0.0)
        weights = prior[i] ** (1.0 / tau)
        return int(rng.choice(vocab, p=weights / weights.sum()))

    for c in range(loop.cycles):
        share = 1.0 if not pool else max(loop.fresh_fraction, 1 - len(pool) / k)
        n_fresh = round(share * n) if np.isfinite(schedule[c]) else n
        cands, written = [], []
        for j in range(n):
            if j < n_fresh:
                x = np.array([sample_token(i, schedule[c]) for i in range(d)])
                w = np.ones(d, dtype=bool)
            else:
                x = pool[rng.integers(len(pool))].copy()
                w = rng.random(d) < schedule[c]
                for i in np.flatnonzero(w):
                    x[i] = sample_token(i, schedule[c])
            cands.append(x)
            written.append(w)
        valid, fits, novs = [], [], []
        for x, w in zip(cands, written):
            logp = 0.0
            for i in np.flatnonzero(w):
                z = (
                    g.base_logit
                    + g.bonus_max * bonus
                    + g.familiarity * np.log(vocab * prior[i, x[i]])
                )
                logp -= np.logaddexp(0.0, -z)
            valid.append(rng.random() < g.ceiling * np.exp(logp))
            fits.append(fitness(x))
            dists = np.sort([np.mean(x != a) for a in archive])
            novs.append(float(np.mean(dists[: min(loop.novelty_k, len(dists))])))
        pairs = [np.mean(a != b) for i, a in enumerate(cands) for b in cands[i + 1 :]]
        n_valid = sum(valid)
        ranked = sorted((i for i in range(n) if valid[i]), key=lambda i: -fits[i])[:k]
        out.append(
            {
                "cycle": c + 1,
                "validity": n_valid / n,
                "novelty": float(np.mean(novs)),
                "diversity": float(np.mean(pairs)),
                "fitness": float(np.mean([fits[i] for i in range(n) if valid[i]]))
                if n_valid
                else float("nan"),
            }
        )
        if ranked:
            pool = [cands[i] for i in ranked]
            archive.extend(pool)
            signal = len(pool) / k
            bonus = min(1.0, bonus + g.bonus_rate * signal)
            counts = np.zeros((d, vocab))
            for x in pool:
                counts[np.arange(d), x] += 1
            target = (1 - g.smoothing) * counts / len(pool) + g.smoothing / vocab
            step = g.prior_rate * signal
            prior = (1 - step) * prior + step * target
    return out


def simulate_reference(config: Config) -> list[list[dict[str, float]]]:
    """Run `config.trials` trials one after another (archive policy 'selected' only)."""
    if config.loop.archive != "selected":
        raise ValueError("the reference loop implements loop.archive = 'selected' only")
    rng = np.random.default_rng(config.seed)
    return [run_trial(config, rng) for _ in range(config.trials)]
