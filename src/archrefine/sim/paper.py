"""The paper's generator (§2): template mutation plus a prior that learns, and a validity bonus.

Mechanisms (docs/model.md gives the equations and the reasons for each parameter value):

* **Prior.** Each trial's generator is a per-position categorical distribution P (d × V), uniform
  at first. Fresh candidates are drawn from P; a mutation replaces a template token with a draw
  from P at that position, as a model rewrites a token with what it finds likely.
* **Reference slots.** The prompt holds up to k templates (the pool). A candidate is a mutated
  template; when the pool has fewer than k members (few valid outputs so far), the unfilled share
  of the population is sampled fresh, as a model writes freely when given fewer references.
* **Validity.** A candidate compiles only if every token is right. Tokens copied from a
  template (which was valid) stay right; a token the generator writes (a mutation, or every
  token of a fresh sample) is right with probability
  sigmoid(base + bonus_max·b + familiarity·log(V·P_i(x_i))): the learned *validity bonus*
  b ∈ [0, 1] raises every token's odds, and tokens the prior finds familiar (likely) are right
  more often than unfamiliar ones. Validity is the product over the written tokens, times a
  ceiling for faults no learning removes.
* **Decoding temperature.** Every token the generator writes is drawn from the prior at
  temperature tau = temperature + temperature_span·m (m the cycle's mutation rate): below 1 the
  generator favours what it already finds likely, as code models are sampled (Chen et al. 2021),
  and a request to rewrite more of a template samples more freely (the learned generator's
  rate-to-temperature mapping). Fine-tuning on tempered samples sharpens the prior every round:
  the self-consuming loop with "sampling bias" of Alemohammad et al. (2024) and the vanishing
  tails of Shumailov et al. (2024), so diversity keeps falling after validity has saturated.
* **Fine-tuning.** The selection is the training set, and what a cycle teaches is proportional
  to how full it is, s = |selection| / k: with fewer than k valid outputs there is less to
  learn from. Every full selection teaches the same amount until nothing is left to learn, so
  the bonus grows linearly and stops, b ← min(1, b + bonus_rate·s), and the prior steps toward
  the selection's label-smoothed token frequencies by prior_rate·s (smoothing toward the
  starting distribution stands for what anchors a fine-tuned model to its base: the "fresh
  data" that keeps a self-consuming loop from collapsing entirely). Like SFT run to
  convergence, a small selection is learned as sharply as a large one, so a small k
  concentrates the prior more. Learning speed rises with validity, which learning raises, so
  validity takes off late and fast (autocatalysis), and the same step narrows the prior, so
  novelty and diversity fall while validity rises: the trade-off is one mechanism.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from archrefine.core import fast
from archrefine.core.config import GeneratorConfig
from archrefine.core.metrics import token_counts
from archrefine.sim.base import Candidates
from archrefine.sim.drift import Drift, SetGrowth


def sample_categorical(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draws: `cdf (trials, d, V)`, `u (trials, n, d)` → tokens `(trials, n, d)`.

    The token is the number of CDF steps below u. With numba (the `fast` extra) a compiled loop
    counts them per draw; without, they are counted one vocabulary entry at a time so memory
    stays at trials·n·d (measured faster than one broadcast or a flat searchsorted). Both make
    the same comparisons on the same numbers, so the tokens are identical (tests/test_knn.py).
    """
    if fast.loaded():  # loaded by the kNN when the run is large enough to repay numba's start
        return fast.kernels().sample_categorical(np.ascontiguousarray(cdf), np.ascontiguousarray(u))
    out = np.zeros(u.shape, dtype=np.int16)
    for v in range(cdf.shape[2] - 1):
        out += u > cdf[:, None, :, v]
    return out


def children(
    cdf: np.ndarray,
    u: np.ndarray,
    mutate_u: np.ndarray,
    rate: float,
    pick: np.ndarray,
    pool: np.ndarray,
    fresh_rows: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """A cycle's candidates and where each was written: row j of trial t is a fresh draw (of
    `cdf` at `u`) where j < `fresh_rows[t]`, else its template `pool[t, pick[t, j]]` with the
    positions where `mutate_u` < `rate` drawn afresh. With numba loaded, one compiled pass
    makes the same comparisons (and only the draws it keeps)."""
    if fast.loaded() and pool.dtype == np.int16:
        f, i = (functools.partial(np.ascontiguousarray, dtype=t) for t in (np.float64, np.int64))
        return fast.kernels().propose(  # the types `fast._warm` loads: no new compilation
            f(cdf),
            f(u),
            f(mutate_u),
            float(rate),
            i(pick),
            np.ascontiguousarray(pool),
            i(fresh_rows),
        )
    trials, n, _ = u.shape
    mutate = mutate_u < rate
    draws = sample_categorical(cdf, u)
    templates = pool[np.arange(trials)[:, None], pick]
    kept = np.where(mutate, draws, templates)
    keep_fresh = (np.arange(n)[None, :] < fresh_rows[:, None])[..., None]
    return np.where(keep_fresh, draws, kept), keep_fresh | mutate


def written_cost(cost: np.ndarray, seqs: np.ndarray, written: np.ndarray) -> np.ndarray:
    """`(trials, n)`: per candidate, the sum over the positions it wrote of `cost (trials, d,
    V)` at its token there. Added position by position, left to right, so the compiled twin
    (numba, where loaded) adds the same numbers in the same order and gets the same sums."""
    trials, n, d = seqs.shape
    if d == 0:  # nothing written: no cost (both paths start from the first position's)
        return np.zeros((trials, n))
    if fast.loaded() and seqs.dtype == np.int16:
        c = np.ascontiguousarray
        return fast.kernels().written_cost(c(cost, np.float64), c(seqs), c(written, bool))
    flat = seqs + (np.arange(trials * d, dtype=np.int32) * cost.shape[2]).reshape(trials, 1, d)
    terms = np.take(cost.reshape(-1), flat) * written
    total = terms[..., 0].copy()
    for i in range(1, d):
        total += terms[..., i]
    return total


def _tempered(prior: np.ndarray, tau: float) -> np.ndarray:
    """`prior (trials, d, V)` at temperature `tau`."""
    if tau == 1.0:
        return prior
    logp = np.log(np.maximum(prior, 1e-300)) / tau
    p = np.exp(logp - logp.max(axis=2, keepdims=True))
    return p / p.sum(axis=2, keepdims=True)


def _cdf(prior: np.ndarray, tau: float) -> np.ndarray:
    return np.cumsum(_tempered(prior, tau), axis=2)


class PaperGenerator:
    """Batched paper generator; all state is `(trials, ...)` numpy arrays."""

    def __init__(
        self,
        config: GeneratorConfig,
        *,
        trials: int,
        length: int,
        vocab: int,
        rng: np.random.Generator,
        initial: np.ndarray | None = None,
    ):
        self.cfg, self.rng, self.vocab = config, rng, vocab
        # the space's format (which tokens may stand where); uniform unless the space says more
        start = np.full((length, vocab), 1.0 / vocab) if initial is None else initial
        self.initial = np.broadcast_to(start, (trials, length, vocab))
        self.prior = self.initial.copy()
        self.bonus = np.zeros(trials)
        self.drift = Drift(config.drift, trials) if config.drift > 0 else None  # sim/drift.py
        self.growth = SetGrowth(trials) if config.bonus_growth == "set" else None  # same
        self._costs: tuple | None = None  # `start_costs`: (prior, bonus, its result's getter)
        self._started_cdf: tuple | None = None  # `start_costs`: (prior, tau, result's getter)

    def tau(self, rate: float) -> float:
        """The decoding temperature at mutation rate `rate`: temperature + temperature_span *
        rate (cycle 1, no rate: temperature)."""
        cfg = self.cfg
        return cfg.temperature + (cfg.temperature_span * rate if np.isfinite(rate) else 0.0)

    def sampling(self, rate: float) -> np.ndarray:
        """The distribution the generator decodes from at mutation rate `rate`: the prior at
        temperature `tau(rate)`."""
        return _tempered(self.prior, self.tau(rate))

    def sample(self, n: int, rate: float = float("nan")) -> np.ndarray:
        trials, d, _ = self.prior.shape
        u = self.rng.random((trials, n, d))
        return sample_categorical(self._cdf(rate), u)

    def propose(
        self, pool: np.ndarray, pool_size: np.ndarray, n: int, rate: float, fresh: float
    ) -> Candidates:
        trials, d, _ = self.prior.shape
        # every draw first (in the order they always came), then the decoding distribution,
        # which the helper thread may still be computing (`start_costs`)
        u = self.rng.random((trials, n, d))  # fresh samples double as mutation replacements
        if not np.isfinite(rate) or pool_size.max() == 0:
            draws = sample_categorical(self._cdf(rate), u)
            return Candidates(draws, np.ones(draws.shape, dtype=bool))
        pick = (self.rng.random((trials, n)) * np.maximum(pool_size, 1)[:, None]).astype(int)
        mutate_u = self.rng.random((trials, n, d))
        # one reference slot per template: slots the pool cannot fill are written freely
        share = np.maximum(fresh, 1.0 - pool_size / pool.shape[1])
        fresh_rows = np.round(share * n).astype(np.int64)
        return Candidates(*children(self._cdf(rate), u, mutate_u, rate, pick, pool, fresh_rows))

    def start_costs(
        self, run: Callable[..., Callable[[], np.ndarray]], rate: float = float("nan")
    ) -> None:
        """Have `run` (the simulator's helper thread) compute the decoding distribution at
        `rate` and the validity costs of the current prior and bonus while this thread draws
        and proposes: they depend on nothing a proposal draws."""
        tau = self.tau(rate)
        self._started_cdf = (self.prior, tau, run(_cdf, self.prior, tau))
        state = self._cost_inputs()
        self._costs = (*state[:2], run(self._validity_costs, *state))

    def _cdf(self, rate: float) -> np.ndarray:
        """The cumulative decoding distribution `(trials, d, V)` at `rate`: the one
        `start_costs` started where it was for this very prior and temperature."""
        tau, started = self.tau(rate), self._started_cdf
        if started is not None and started[0] is self.prior and started[1] == tau:
            return started[2]()
        return _cdf(self.prior, tau)

    def _cost_inputs(self) -> tuple:
        penalty = None if self.drift is None else self.drift.penalty()
        return self.prior, self.bonus, penalty

    def _validity_costs(self, prior, bonus, penalty) -> np.ndarray:
        """-log sigmoid of every token's log-odds `(trials, d, V)`: a token's log-odds depend
        only on (trial, position, token), so this per entry of the prior (trials·d·V) is cheaper
        than per candidate token (trials·n·d)."""
        cfg = self.cfg
        with np.errstate(divide="ignore"):  # a token the format forbids: log 0
            logit = (
                cfg.base_logit
                + cfg.bonus_max * bonus[:, None, None]
                + cfg.familiarity * np.log(self.vocab * prior)
            )
        if penalty is not None:
            logit = logit - penalty[:, None, None]
        return np.logaddexp(0.0, -logit)  # -log sigmoid, computed stably

    def validity(self, cands: Candidates) -> np.ndarray:
        cfg = self.cfg
        seqs = cands.seqs
        started, self._costs = self._costs, None
        if started is not None and started[0] is self.prior and started[1] is self.bonus:
            cost = started[2]()  # `start_costs` for this very state (refine replaces both)
        else:
            cost = self._validity_costs(*self._cost_inputs())
        return cfg.ceiling * np.exp(-written_cost(cost, seqs, cands.written))

    def state(self) -> dict[str, np.ndarray]:
        """What refinement changes (the prior and the bonus), for a checkpoint."""
        drift = {} if self.drift is None else self.drift.state()
        growth = {} if self.growth is None else self.growth.state()
        return {"prior": self.prior, "bonus": self.bonus} | drift | growth

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what `state` returned (the same config and trials)."""
        prior, bonus = np.array(state["prior"]), np.array(state["bonus"])
        if prior.shape != self.prior.shape or bonus.shape != self.bonus.shape:
            raise ValueError(f"generator state {prior.shape} does not fit {self.prior.shape}")
        self.prior, self.bonus = prior, bonus
        if self.drift is not None:
            self.drift.load_state(state)
        if self.growth is not None:
            self.growth.load_state(state)

    def refine(
        self, pool: np.ndarray, pool_size: np.ndarray, signal: np.ndarray | None = None
    ) -> None:
        """Step toward the first `pool_size` rows of `pool`. The step is `signal` (per trial),
        by default how full the set is; a set that accumulates earlier selections
        (`intervention.accumulate`) passes the cycle's own fullness, so more rows spread the
        target without teaching more per cycle."""
        cfg = self.cfg
        trials, k, d = pool.shape
        if signal is None:
            signal = pool_size / k  # how full the fine-tuning set is
        taught = signal if self.growth is None else self.growth.update(signal)  # sim/drift.py
        self.bonus = np.minimum(self.bonus + cfg.bonus_rate * taught, 1.0)
        if self.drift is not None:
            self.drift.update(signal)
        counts = token_counts(pool, self.vocab, np.arange(k)[None, :] < pool_size[:, None])
        empirical = counts / np.maximum(pool_size, 1)[:, None, None]
        target = (1 - cfg.smoothing) * empirical + cfg.smoothing * self.initial  # label smoothing
        step = (cfg.prior_rate * signal)[:, None, None]
        self.prior = (1 - step) * self.prior + step * target
