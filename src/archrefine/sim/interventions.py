"""Interventions beyond mutation schedules, to keep a loop diverse (docs/interventions.md).

`Steering` stands between the loop and its generator at three points: it proposes (island
templates; temperature as the mutation operator), selects (novelty-aware scores; a MAP-Elites
archive), and forms the fine-tuning set (replay of earlier selections). With every option off
(`InterventionConfig()`), each call is exactly the plain loop's call and draws nothing more from
the random generator, so results are unchanged bit for bit.

* **Novelty selection.** Candidates are ranked by fitness + λ·novelty (novelty: distance to the
  archive, as recorded), the novelty-search trade of Lehman & Stanley (2011).
* **MAP-Elites** (Mouret & Clune 2015), with pyribs' `GridArchive`: every valid candidate enters a
  per-trial grid over two descriptors; the selection is k elites drawn uniformly, so the
  fine-tuning set spans the grid's cells instead of one fitness peak.
* **Islands** (FunSearch's islands; Romera-Paredes et al. 2024): the population is split into
  sub-populations, each mutating only its own templates; every `migration_interval` cycles each
  island's best `migrants` templates move to the next island (a ring). The generator (the model)
  is shared and fine-tuned on the union of the islands' selections.
* **Temperature as mutation** (LLMatic; Nasir et al. 2024): templates are rewritten at the fixed
  rate `schedule.rate`, and the schedule's value drives the decoding temperature instead:
  tau = T + S·rate + span·(m_c − rate), with T, S the generator's temperature and span.
* **Replay.** A share of the fine-tuning set is drawn from earlier cycles' selections (within
  `replay_window` cycles), as replaying earlier data keeps a self-consuming loop from narrowing
  (Bertrand et al. 2024). Drawn into k slots, it can never teach more than k rows' tokens.
* **Accumulate** (Gerstgrasser et al. 2024): the fine-tuning set is the selection *plus* every
  earlier selection in the window, all rows weighted alike; the step stays the cycle's own
  fullness, so the data spreads the target without teaching faster.
* **Elitism** (De Jong 1975): a share of the population are children of the best valid
  candidate found so far, rewritten at their own low rate: a small exploiting lineage that keeps
  the best fitness while the rest of the population explores. It costs little diversity because
  few pairs of candidates are both elite children.
"""

from __future__ import annotations

import numpy as np

from archrefine.core.config import Config
from archrefine.sim.base import Candidates
from archrefine.sim.elites import EliteArchive, EliteArchiveState
from archrefine.sim.selection import scored, top_k


def compact(pool: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `pool (trials, k, d)` where `mask (trials, k)`, moved to the front (order kept)."""
    order = np.argsort(~mask, axis=1, kind="stable")
    return np.take_along_axis(pool, order[..., None], axis=1), mask.sum(axis=1)


class Steering:
    """The interventions of `config.intervention` for one batched run (docs/interventions.md)."""

    def __init__(self, config: Config, length: int, vocab: int, generator) -> None:
        self.cfg = config.intervention
        self.loop, self.schedule = config.loop, config.schedule
        trials, k = config.trials, config.loop.top_k
        self.base = getattr(generator, "cfg", None)
        self.elites = None
        if self.cfg.qd == "map-elites":
            space = "grounded" if config.space.kind == "grounded" else "abstract"
            self.elites = EliteArchive(trials, length, self.cfg.qd_cells, space, vocab, config.seed)
        # islands: island i owns population block `blocks[i]` and template slots `slots[i]`
        isl = self.cfg.islands
        self.slots = np.array_split(np.arange(k), isl)
        self.templates = np.zeros((trials, k, length), dtype=np.int16)
        self.sizes = np.zeros((trials, isl), dtype=int)
        self.history: list[tuple[np.ndarray, np.ndarray]] = []  # earlier selections (replay)
        self.n_elite = int(round(self.cfg.elite_share * config.loop.population))
        self.blocks = np.array_split(np.arange(config.loop.population - self.n_elite), isl)
        self.best_seq = np.zeros((trials, length), dtype=np.int16)  # elitism: best valid so far
        self.best_fit = np.full(trials, -np.inf)
        self.cycle = 0
        self.stateful = bool(self.cfg.stateful())

    def state(self) -> dict[str, np.ndarray]:
        """What the cycles changed, for a checkpoint (`bound` puts it beside the generator's)."""
        trials, k, d = self.templates.shape
        out = {
            "cycle": np.array([self.cycle]),
            "templates": self.templates,
            "sizes": self.sizes,
            "history_pool": np.stack([p for p, _ in self.history] or [np.zeros((0, trials, k, d))]),
            "history_size": np.stack([s for _, s in self.history] or [np.zeros((0, trials))]),
        }
        if self.elites is not None:
            out |= {f"elites.{k}": v for k, v in EliteArchiveState.dump(self.elites).items()}
        if self.n_elite:
            out |= {"best_seq": self.best_seq, "best_fit": self.best_fit}
        return out

    def load_state(self, saved: dict[str, np.ndarray]) -> None:
        self.cycle = int(saved["cycle"][0])
        self.templates, self.sizes = saved["templates"], saved["sizes"]
        pools, sizes = saved["history_pool"].astype(np.int16), saved["history_size"].astype(int)
        self.history = [(pools[i], sizes[i]) for i in range(len(pools))]
        if self.elites is not None:
            elites = {k[len("elites.") :]: v for k, v in saved.items() if k.startswith("elites.")}
            EliteArchiveState.load(self.elites, elites)
        if self.n_elite:
            self.best_seq = saved["best_seq"].astype(np.int16)
            self.best_fit = saved["best_fit"].astype(float)

    def bound(self, generator):
        """The generator as a checkpoint sees it: with this steering's state saved beside its
        own when an intervention carries state, else the generator itself (files unchanged)."""
        return _Bound(generator, self) if self.stateful else generator

    def propose(self, generator, pool, pool_size, n: int, rate: float, fresh: float) -> Candidates:
        """The generator's proposal: per island, and with the rate turned into temperature."""
        self.cycle += 1
        if self.cfg.mutation == "temperature" and np.isfinite(rate) and self.base is not None:
            r0 = self.schedule.rate
            tau = self.base.temperature + self.cfg.temperature_span * (rate - r0)
            generator.cfg = self.base.model_copy(update={"temperature": max(tau, 0.01)})
            rate = r0
        if self.cfg.islands == 1 and not self.n_elite:
            return generator.propose(pool, pool_size, n, rate, fresh)
        if self.cfg.islands == 1:
            parts = [generator.propose(pool, pool_size, n - self.n_elite, rate, fresh)]
        else:
            parts = [
                generator.propose(self.templates[:, s], self.sizes[:, i], len(b), rate, fresh)
                for i, (b, s) in enumerate(zip(self.blocks, self.slots, strict=True))
            ]
        if self.n_elite:
            parts.append(self._elite_children(generator, rate))
        return Candidates(
            np.concatenate([p.seqs for p in parts], axis=1),
            np.concatenate([p.written for p in parts], axis=1),
        )

    def _elite_children(self, generator, rate: float) -> Candidates:
        """`n_elite` children of each trial's best valid candidate so far, proposed by the
        generator itself from that one template at `elite_rate` (so they decode as its small
        rewrites do); written fresh while a trial has found nothing valid, and in cycle 1."""
        found = np.isfinite(self.best_fit).astype(int)
        r = self.cfg.elite_rate if np.isfinite(rate) else rate
        return generator.propose(self.best_seq[:, None, :], found, self.n_elite, r, 0.0)

    def select(
        self, seqs: np.ndarray, fit: np.ndarray, nov: np.ndarray, valid: np.ndarray, k: int, rng
    ) -> tuple[np.ndarray, np.ndarray]:
        """The cycle's selection `(pool (trials, k, d), size)`, compact and best first."""
        if self.n_elite:  # the best valid candidate so far, by fitness (not the selection score)
            f = np.where(valid, fit, -np.inf)
            j = f.argmax(axis=1)
            top = f[np.arange(len(j)), j]
            better = top > self.best_fit
            self.best_seq[better] = seqs[better, j[better]]
            self.best_fit = np.maximum(self.best_fit, top)
        score = scored(fit, nov, self.cfg.selection, self.cfg.novelty_weight)
        if self.elites is not None:
            self.elites.add(seqs, score, valid)
            return self.elites.select(k, seqs.shape[2], rng)
        if self.cfg.islands == 1:
            return top_k(seqs, score, valid, k, rng)
        for i, (block, slots) in enumerate(zip(self.blocks, self.slots, strict=True)):
            got, size = top_k(seqs[:, block], score[:, block], valid[:, block], len(slots), rng)
            keep = (size == 0)[:, None, None]  # an island with nothing valid keeps its templates
            self.templates[:, slots] = np.where(keep, self.templates[:, slots], got)
            self.sizes[:, i] = np.where(size == 0, self.sizes[:, i], size)
        if self.cycle % self.cfg.migration_interval == 0 and self.cfg.migrants > 0:
            self._migrate()
        filled = np.concatenate(
            [np.arange(len(s))[None, :] < self.sizes[:, [i]] for i, s in enumerate(self.slots)],
            axis=1,
        )
        return compact(self.templates.copy(), filled)

    def _migrate(self) -> None:
        """Each island's best `migrants` templates join the next island (ring), appended while
        it has room and replacing its worst templates after."""
        old_t, old_s = self.templates.copy(), self.sizes.copy()
        isl = self.cfg.islands
        for i in range(isl):
            src, dst = self.slots[i], self.slots[(i + 1) % isl]
            j = (i + 1) % isl
            for t in range(self.templates.shape[0]):
                m = min(self.cfg.migrants, old_s[t, i], len(dst))
                if m == 0:
                    continue
                start = min(self.sizes[t, j], len(dst) - m)
                self.templates[t, dst[start : start + m]] = old_t[t, src[:m]]
                self.sizes[t, j] = max(self.sizes[t, j], start + m)

    def training_set(self, pool: np.ndarray, size: np.ndarray, rng: np.random.Generator) -> tuple:
        """What the generator is fine-tuned on, as `refine`'s arguments: the selection, with
        `replay` of its k slots drawn (uniformly, with replacement) from earlier cycles'
        selections; or, with `accumulate`, `(rows, count, signal)`: the selection and every
        earlier one in the window, with the step the selection's own fullness."""
        if self.cfg.accumulate:
            return self._accumulated(pool, size)
        k = pool.shape[1]
        r = int(round(self.cfg.replay * k))
        if r == 0:
            return pool, size
        window = self.cfg.replay_window
        earlier = self.history[-window:] if window else self.history
        self.history.append((pool.copy(), size.copy()))
        if not earlier:
            return pool, size
        rows = np.concatenate([p for p, _ in earlier], axis=1)  # (trials, cycles·k, d)
        have = np.concatenate([np.arange(k)[None, :] < s[:, None] for _, s in earlier], axis=1)
        mixed, mixed_size = pool.copy(), np.minimum(size, k - r)
        for t in range(pool.shape[0]):
            where = np.flatnonzero(have[t])
            if len(where) == 0:
                mixed_size[t] = size[t]
                continue
            draw = where[rng.integers(0, len(where), size=r)]
            mixed[t, mixed_size[t] : mixed_size[t] + r] = rows[t, draw]
            mixed_size[t] += r
        return mixed, mixed_size

    def _accumulated(
        self, pool: np.ndarray, size: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k, window = pool.shape[1], self.cfg.replay_window
        earlier = self.history[-window:] if window else self.history
        self.history.append((pool.copy(), size.copy()))
        parts = [(pool, size), *earlier[::-1]]  # newest first
        rows = np.concatenate([p for p, _ in parts], axis=1)
        have = np.concatenate([np.arange(k)[None, :] < s[:, None] for _, s in parts], axis=1)
        rows, count = compact(rows, have)
        return rows, count, size / k


class _Bound:
    """A generator plus the steering's state, under `steer.` keys of the generator's state."""

    def __init__(self, generator, steer: Steering) -> None:
        self.generator, self.steer = generator, steer

    def state(self) -> dict[str, np.ndarray]:
        own = self.generator.state() if hasattr(self.generator, "state") else {}
        return {**own, **{f"steer.{k}": v for k, v in self.steer.state().items()}}

    def load_state(self, saved: dict[str, np.ndarray]) -> None:
        own = {k: v for k, v in saved.items() if not k.startswith("steer.")}
        if hasattr(self.generator, "load_state"):
            self.generator.load_state(own)
        self.steer.load_state({k[6:]: v for k, v in saved.items() if k.startswith("steer.")})
