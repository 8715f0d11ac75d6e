"""The refinement loop written plainly with DEAP: the speed peer of `benchmarks/reproduce.py`.

    python benchmarks/peer_deap.py --trials 1000 --archive selected [--out metrics.csv]

This is the loop as a user who reaches for DEAP would write it, one trial (one EA) after another
and one candidate at a time: a `creator.Individual` list per candidate, `tools.mutUniformInt` for
mutation, `tools.selBest` for the top-k, the toolbox's `clone`, `evaluate` and `select`, and numpy
inside each candidate where a user would use it (sampling a fresh candidate from the prior, the
NK fitness lookup, the distances to the archive). It does the work of `archrefine run` per
candidate (paper scale: 22 cycles of 50 candidates, top-10, novelty against the k = 15 nearest of
an archive of 50 known architectures plus each cycle's selected or valid candidates, mean pairwise
Hamming diversity) with the same definitions:

* fresh candidates are inverse-CDF draws from the prior at the decoding temperature, and a
  candidate's validity is a Bernoulli on ceiling · Π sigmoid(base + bonus_max·b +
  familiarity·log(V·P_i(x_i))) over the tokens it wrote; the prior and the bonus learn from the
  selection as in `archrefine.sim.paper` (docs/model.md);
* mutation is DEAP's `mutUniformInt` (each position redrawn uniformly with the cycle's rate):
  the same draws per candidate as the paper model's mutation from the prior, not the same
  distribution, so this peer's metrics are not the paper model's (`reference_loop.py` is the
  per-candidate twin of the model, `tests/test_reference.py`); it measures speed only;
* NK fitness is the user's own few lines over a per-trial table `(d, V^(K+1))` (a DEAP user
  writes the landscape they evaluate; importing the project's batched `NKLandscape` would not fit
  a per-candidate `evaluate`).

The parameters come from `archrefine.Config` defaults (with `--set`-style overrides none), so
both sides run the same configuration.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
from deap import base, creator, tools

from archrefine.core.config import Config
from archrefine.core.schedules import rates
from archrefine.core.store import atomic_write_text

creator.create("FitnessMax", base.Fitness, weights=(1.0,))
creator.create("Individual", list, fitness=creator.FitnessMax)


def nk_fitness(ind, table: np.ndarray, vocab: int, k: int) -> tuple[float]:
    """Mean NK contribution: position i reads tokens i..i+k (wrapping)."""
    x = np.asarray(ind)
    d = len(x)
    index = np.zeros(d, dtype=np.int64)
    for j in range(k + 1):
        index += np.roll(x, -j) * vocab**j
    return (float(table[np.arange(d), index].mean()),)


def novelty(ind, archive: np.ndarray, k: int) -> float:
    """Mean normalized Hamming distance to the k nearest archive rows."""
    dist = (archive != np.asarray(ind)).sum(axis=1)
    kk = min(k, len(dist))
    return float(np.partition(dist, kk - 1)[:kk].mean() / archive.shape[1])


def diversity(pop: list) -> float:
    """Mean pairwise normalized Hamming distance in the population."""
    x = np.asarray(pop)
    n = len(x)
    dist = (x[:, None, :] != x[None, :, :]).mean(axis=2)
    return float(dist.sum() / (n * (n - 1)))


def run_trial(cfg: Config, rng: np.random.Generator) -> list[dict[str, float]]:
    g, loop, space = cfg.generator, cfg.loop, cfg.space
    d, vocab, n, k = space.length, space.vocab, loop.population, loop.top_k
    table = rng.random((d, vocab ** (cfg.fitness.k + 1)))
    archive = np.zeros((space.known + n * loop.cycles, d), dtype=np.int64)
    archive[: space.known] = rng.integers(0, vocab, (space.known, d))
    filled = space.known
    prior = np.full((d, vocab), 1.0 / vocab)
    bonus = 0.0
    pool: list = []
    schedule = rates(cfg.schedule, loop.cycles)
    toolbox = base.Toolbox()
    toolbox.register("evaluate", nk_fitness, table=table, vocab=vocab, k=cfg.fitness.k)
    toolbox.register("select", tools.selBest)
    out = []
    for c in range(loop.cycles):
        rate = schedule[c]
        tau = g.temperature + (g.temperature_span * rate if np.isfinite(rate) else 0.0)
        weights = prior ** (1.0 / tau)
        cdf = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)[:, :-1]
        toolbox.register("mutate", tools.mutUniformInt, low=0, up=vocab - 1, indpb=rate)
        share = 1.0 if not pool else max(loop.fresh_fraction, 1 - len(pool) / k)
        n_fresh = round(share * n) if np.isfinite(rate) else n
        pop = []
        for j in range(n):
            if j < n_fresh:
                ind = creator.Individual((rng.random(d)[:, None] > cdf).sum(axis=1).tolist())
                written = np.ones(d, dtype=bool)
            else:
                ind = toolbox.clone(random.choice(pool))
                before = np.array(ind)
                (ind,) = toolbox.mutate(ind)
                written = np.array(ind) != before
            x = np.array(ind)
            logit = (
                g.base_logit
                + g.bonus_max * bonus
                + g.familiarity * np.log(vocab * prior[np.arange(d), x])
            )
            p_valid = g.ceiling * np.exp(-np.logaddexp(0.0, -logit)[written].sum())
            ind.valid = bool(rng.random() < p_valid)
            ind.fitness.values = toolbox.evaluate(ind)
            ind.novelty = novelty(ind, archive[:filled], loop.novelty_k)
            pop.append(ind)
        valid = [ind for ind in pop if ind.valid]
        selected = toolbox.select(valid, k)
        out.append(
            {
                "cycle": c + 1,
                "validity": len(valid) / n,
                "novelty": float(np.mean([ind.novelty for ind in pop])),
                "diversity": diversity(pop),
                "fitness": float(np.mean([ind.fitness.values[0] for ind in valid]))
                if valid
                else float("nan"),
            }
        )
        joins = (
            selected if loop.archive == "selected" else valid if loop.archive == "valid" else pop
        )
        for ind in joins:
            archive[filled] = ind
            filled += 1
        if selected:
            pool = [toolbox.clone(ind) for ind in selected]
            signal = len(pool) / k
            bonus = min(1.0, bonus + g.bonus_rate * signal)
            counts = np.zeros((d, vocab))
            for ind in pool:
                counts[np.arange(d), ind] += 1
            target = (1 - g.smoothing) * counts / len(pool) + g.smoothing / vocab
            step = g.prior_rate * signal
            prior = (1 - step) * prior + step * target
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--archive", choices=("selected", "valid", "all"), default="selected")
    parser.add_argument("--schedule", default="cosine")
    parser.add_argument("--out", help="write the per-cycle means here (CSV)")
    args = parser.parse_args(argv)
    cfg = Config(trials=args.trials, seed=args.seed).with_overrides(
        {"loop.archive": args.archive, "schedule.kind": args.schedule}
    )
    random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    rows = [row for _ in range(cfg.trials) for row in run_trial(cfg, rng)]
    wall = time.perf_counter() - start
    candidates = cfg.trials * cfg.loop.cycles * cfg.loop.population
    keys = ("validity", "novelty", "diversity", "fitness")
    means = {
        key: np.nanmean([r[key] for r in rows if r["cycle"] == cfg.loop.cycles]) for key in keys
    }
    if args.out:
        lines = ["cycle," + ",".join(keys)]
        lines += [",".join(str(r[key]) for key in ("cycle", *keys)) for r in rows]
        atomic_write_text(Path(args.out), "\n".join(lines) + "\n")
    print(
        f"{candidates} candidates in {wall:.1f} s ({candidates / wall:,.0f}/s in the loop); "
        "final cycle: " + ", ".join(f"{key} {v:.3f}" for key, v in means.items()),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
