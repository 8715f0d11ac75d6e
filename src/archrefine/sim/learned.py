"""A generator that really learns: a tiny decoder-only transformer per trial (docs/learned.md).

* **One model per trial, one batched call.** Every weight carries a leading trials axis and every
  matmul is a `bmm` over it, so all trials sample and fine-tune together; Python loops run over
  sampling positions and optimizer steps only, never over trials or candidates.
* **Pre-training** stands in for an LLM that has read the literature: one model learns
  `space.KNOWN_ARRAY` and noisy copies of it (tokens replaced at `pretrain_noise`), stopping
  early once sampled validity reaches `target_validity` (Khalid et al. measured 44% at cycle 1),
  and is copied to every trial; trials then differ by sampling and fine-tuning randomness.
* **Proposals.** A template is a prompt: each of its positions is rewritten with probability
  `rate` (the schedule) by sampling the model's next-token distribution given the tokens before
  it, at temperature `temperature + temperature_span · rate` and nucleus `top_p`; the rest is
  copied. Fresh candidates (and every candidate in cycle 1, where `rate` is NaN and the
  temperature is `temperature`) are written entirely from BOS.
* **Fine-tuning** is supervised next-token cross-entropy on a cumulative set that grows by each
  cycle's selection, with Adam state kept across cycles; `lora_rank > 0` trains only low-rank
  adapters on every projection (written directly into the batched layers: peft cannot batch).
* **Validity is never injected**: `validity` returns None and the grounded space's exact checker
  decides; the model only ever sees which sequences were selected.

The batched transformer itself (parameters, forward, loss, Adam, sampling) is `transformer.py`.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from archrefine.core.config import LearnedConfig
from archrefine.sim.base import Candidates
from archrefine.sim.stops import same_stop  # noqa: F401 - re-exported: it lived here
from archrefine.sim.transformer import (  # noqa: F401 - re-exported: these lived here
    PROJECTIONS,
    Adam,
    Params,
    forward,
    init_lora,
    init_params,
    one_thread,
    sample,
    token_loss,
)

PRETRAIN_BATCH = 32
PRETRAIN_FIELDS = {"d_model", "layers", "heads", "temperature", "top_p", "pretrain_steps"}
PRETRAIN_FIELDS |= {"pretrain_noise", "pretrain_lr", "target_validity"}


# ----------------------------------------------------------------------------- pre-training


class _Pretraining:
    """One pre-training run, kept so a later, higher `target_validity` continues it.

    The run does not depend on the target until it stops, so stopping at the first probe that
    reaches a target is a prefix of the run for any higher target: `calibrate` perturbs
    `target_validity` and pays only for the extra steps. Only probes that set a new best
    validity can be the first to reach some target, so only their weights are kept.
    """

    def __init__(self, cfg: LearnedConfig, vocab: int, length: int, seed: int):
        from archrefine.space import KNOWN_ARRAY

        self.cfg, self.vocab, self.length = cfg, vocab, length
        self.g = torch.Generator().manual_seed(seed)
        self.p = {k: v.requires_grad_() for k, v in init_params(cfg, vocab, length, self.g).items()}
        self.known = torch.tensor(KNOWN_ARRAY, dtype=torch.long)
        self.opt, self.names = Adam(list(self.p.values()), cfg.pretrain_lr), list(self.p)
        self.step, self.validity = 0, 0.0
        self.records: list[tuple[int, float, Params]] = []  # (step, validity, weights): bests

    def _weights(self) -> Params:
        return {k: v.detach().clone() for k, v in self.p.items()}

    def until(self, target: float) -> tuple[Params, int, float]:
        """(weights, step, validity) where a run with `target_validity = target` stops."""
        from archrefine.space import is_valid

        for step, validity, weights in self.records:
            if validity >= target:
                return weights, step, validity
        cfg, p, names, g = self.cfg, self.p, self.names, self.g
        probe = torch.zeros(1, 256, self.length, dtype=torch.long)
        on, everywhere = torch.ones(1, dtype=torch.bool), torch.ones_like(probe, dtype=torch.bool)
        while self.step < cfg.pretrain_steps:
            self.step += 1
            rows = self.known[torch.randint(len(self.known), (1, PRETRAIN_BATCH), generator=g)]
            noisy = torch.rand(rows.shape, generator=g) < cfg.pretrain_noise
            rows = torch.where(noisy, torch.randint(self.vocab, rows.shape, generator=g), rows)
            loss = token_loss(p, {}, rows, cfg.heads)
            params = [p[k] for k in names]
            self.opt.step(params, torch.autograd.grad(loss.sum(), params), on)
            if self.step % 2 == 0:  # stop as soon as the model writes valid networks often enough
                seqs = sample(p, {}, probe, everywhere, cfg, g)
                self.validity = float(is_valid(seqs[0].numpy()).mean())
                if not self.records or self.validity > self.records[-1][1]:
                    self.records.append((self.step, self.validity, self._weights()))
                if self.validity >= target:
                    return self.records[-1][2], self.step, self.validity
        return self._weights(), self.step, self.validity


@functools.lru_cache(maxsize=8)
def _pretraining(cfg_json: str, vocab: int, length: int, seed: int) -> _Pretraining:
    return _Pretraining(LearnedConfig.model_validate_json(cfg_json), vocab, length, seed)


@one_thread
def _pretrained(cfg_json: str, vocab: int, length: int, seed: int) -> tuple[Params, int, float]:
    """Pre-train one model; runs are cached on the fields they read (the target aside), so
    generators that share a seed share the work (the result is identical either way)."""
    cfg = LearnedConfig.model_validate_json(cfg_json)
    run_json = cfg.model_dump_json(include=PRETRAIN_FIELDS - {"target_validity"})
    run = _pretraining(run_json, vocab, length, seed)
    weights, step, validity = run.until(cfg.target_validity)
    global LAST_PRETRAINING
    reached = validity >= cfg.target_validity  # else it ran out of steps
    LAST_PRETRAINING = tuple((s, v) for s, v, _ in run.records if s <= step) if reached else ()
    return dict(weights), step, validity


#: the new-best probes `(step, validity)` of this process's last pre-training, up to the one it
#: stopped at (empty if it ran out of steps): any `target_validity` up to that validity stops at
#: the first of them that reaches it, so `calibrate` knows which targets give the same run
LAST_PRETRAINING: tuple[tuple[int, float], ...] = ()


# ----------------------------------------------------------------------------- generator


class LearnedGenerator:
    """Batched learned generator: one transformer per trial, stacked on a leading axis.

    Attributes other code may read: `last_loss (trials,)` (the last fine-tuning step's loss,
    NaN where a trial has nothing to learn from yet), `pretrain_stopped_at` and
    `pretrain_validity` (where pre-training stopped, and the validity of its probe sample).
    Pre-training reads `space.KNOWN_ARRAY`, so only the grounded space (15 × 30) is supported.
    """

    @one_thread
    def __init__(
        self,
        config: LearnedConfig,
        *,
        trials: int,
        length: int,
        vocab: int,
        rng: np.random.Generator,
    ):
        if (length, vocab) != (15, 30):
            raise ValueError(
                f"the learned generator writes the grounded space (length 15, vocab 30); "
                f"got length {length}, vocab {vocab}"
            )
        self.cfg, self.rng, self.trials = config, rng, trials
        self.length, self.vocab = length, vocab
        self.g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        pre_seed = int(rng.integers(2**62))
        one, self.pretrain_stopped_at, self.pretrain_validity = _pretrained(
            config.model_dump_json(include=PRETRAIN_FIELDS), vocab, length, pre_seed
        )
        self.params = {k: v.expand(trials, *v.shape[1:]).clone() for k, v in one.items()}
        self.lora = init_lora(config, self.params, self.g) if config.lora_rank else {}
        self.trainable = self.lora if config.lora_rank else self.params
        for q in self.trainable.values():
            q.requires_grad_()
        self.opt = Adam(list(self.trainable.values()), config.lr)
        self.data = torch.zeros(trials, 0, length, dtype=torch.long)  # cumulative fine-tune set
        self.count = torch.zeros(trials, dtype=torch.long)
        self.last_loss = np.full(trials, np.nan)

    def state(self) -> dict[str, np.ndarray]:
        """Everything fine-tuning and sampling change, as numpy arrays (for a checkpoint): the
        trained weights (the adapters under LoRA: the base stays as pre-trained), Adam's m, v and
        step counts, the torch generator, the cumulative fine-tuning set and the last loss."""
        out = {f"weights/{k}": v.detach().numpy().copy() for k, v in self.trainable.items()}
        for i, (m, v) in enumerate(zip(self.opt.m, self.opt.v, strict=True)):
            out[f"adam/m/{i}"], out[f"adam/v/{i}"] = m.numpy().copy(), v.numpy().copy()
        return out | {
            "adam/t": self.opt.t.numpy().copy(),
            "torch_rng": self.g.get_state().numpy().copy(),
            "data": self.data.numpy().copy(),
            "count": self.count.numpy().copy(),
            "last_loss": self.last_loss.copy(),
        }

    @torch.no_grad()
    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what `state` returned (the same config and trials); a ValueError naming the
        array when one is missing or of another shape or kind (a damaged or foreign state)."""
        own = self.state()
        for key, want in own.items():
            got = state.get(key)
            if got is None:
                raise ValueError(f"no array {key!r}")
            fixed = (want.shape[:1] + want.shape[2:]) if key == "data" else want.shape
            shape = (got.shape[:1] + got.shape[2:]) if key == "data" else got.shape  # it grows
            if got.ndim != want.ndim or shape != fixed or got.dtype.kind != want.dtype.kind:
                raise ValueError(f"array {key!r} does not fit this config")

        def tensor(key: str) -> torch.Tensor:
            return torch.from_numpy(np.array(state[key]))

        for k, q in self.trainable.items():
            q.copy_(tensor(f"weights/{k}"))
        for i, (m, v) in enumerate(zip(self.opt.m, self.opt.v, strict=True)):
            m.copy_(tensor(f"adam/m/{i}"))
            v.copy_(tensor(f"adam/v/{i}"))
        self.opt.t.copy_(tensor("adam/t"))
        self.g.set_state(tensor("torch_rng"))
        self.data, self.count = tensor("data"), tensor("count")
        self.last_loss = np.array(state["last_loss"])

    @one_thread
    def propose(
        self, pool: np.ndarray, pool_size: np.ndarray, n: int, rate: float, fresh: float
    ) -> Candidates:
        trials, d = self.trials, self.length
        if not np.isfinite(rate) or pool_size.max() == 0:
            base, write = np.zeros((trials, n, d), dtype=np.int64), np.ones((trials, n, d), bool)
        else:
            pick = (self.rng.random((trials, n)) * np.maximum(pool_size, 1)[:, None]).astype(int)
            templates = pool[np.arange(trials)[:, None], pick]
            rewrite = self.rng.random((trials, n, d)) < rate
            # as in the paper model: reference slots the pool cannot fill are written freely
            share = np.maximum(fresh, 1.0 - pool_size / pool.shape[1])
            keep_fresh = (np.arange(n)[None, :] < np.round(share * n)[:, None])[..., None]
            base, write = np.where(keep_fresh, 0, templates), keep_fresh | rewrite
        seqs = sample(
            self.params, self.lora, torch.as_tensor(base, dtype=torch.long),
            torch.as_tensor(write), self.cfg, self.g, self.temperature(rate),
        )  # fmt: skip
        return Candidates(seqs.numpy().astype(np.int16), write)

    def temperature(self, rate: float) -> float:
        """Sampling temperature at mutation rate `rate`: `temperature + temperature_span · rate`
        (just `temperature` in cycle 1, where `rate` is NaN)."""
        if not np.isfinite(rate):
            return self.cfg.temperature
        return self.cfg.temperature + self.cfg.temperature_span * float(rate)

    def validity(self, cands: Candidates) -> None:
        """None: validity is never injected; the grounded space's checker decides."""
        return None

    def _append(self, pool: np.ndarray, pool_size: np.ndarray) -> None:
        size = torch.as_tensor(np.asarray(pool_size), dtype=torch.long)
        need = int((self.count + size).max())
        if need > self.data.shape[1]:
            grow = max(need - self.data.shape[1], self.data.shape[1])
            pad = torch.zeros(self.trials, grow, self.length, dtype=torch.long)
            self.data = torch.cat([self.data, pad], dim=1)
        t, j = np.nonzero(np.arange(pool.shape[1])[None, :] < np.asarray(pool_size)[:, None])
        t, j = torch.as_tensor(t), torch.as_tensor(j)
        self.data[t, self.count[t] + j] = torch.as_tensor(pool[t.numpy(), j.numpy()]).long()
        self.count += size

    @one_thread
    def refine(self, pool: np.ndarray, pool_size: np.ndarray) -> None:
        """Add the selection to the fine-tuning set, then `steps` Adam steps on minibatches."""
        self._append(pool, pool_size)
        active = self.count > 0
        if not active.any() or self.cfg.steps == 0:
            return
        names = list(self.trainable)
        for _ in range(self.cfg.steps):
            u = torch.rand(self.trials, self.cfg.batch, generator=self.g)
            idx = torch.minimum(
                (u * self.count[:, None]).long(), (self.count - 1).clamp(min=0)[:, None]
            )
            batch = self.data[torch.arange(self.trials)[:, None], idx]
            loss = token_loss(self.params, self.lora, batch, self.cfg.heads)
            params = [self.trainable[k] for k in names]
            self.opt.step(params, torch.autograd.grad(loss.sum(), params), active)
        self.last_loss = np.where(active.numpy(), loss.detach().numpy(), np.nan)
