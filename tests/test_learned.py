"""The learned generator learns: validity rises only through fine-tuning, deterministically."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from archrefine.sim.learned import LearnedConfig, LearnedGenerator  # noqa: E402
from archrefine.sim.selection import top_k  # noqa: E402
from archrefine.space import LENGTH, VOCAB, is_valid  # noqa: E402

# smaller than the defaults where it does not matter, so the whole file runs in seconds
SMALL = {"steps": 10, "batch": 16}


def run_loop(cfg: LearnedConfig, *, trials=4, n=50, k=10, cycles=22, rate=0.5, fresh=1.0, seed=0):
    """A minimal refinement loop: propose → check → top-k by a fixed random table → refine.

    Returns validity `(cycles, trials)`, last fine-tuning loss `(cycles, trials)` and the
    candidates of every cycle.
    """
    rng = np.random.default_rng(seed)
    gen = LearnedGenerator(cfg, trials=trials, length=LENGTH, vocab=len(VOCAB), rng=rng)
    table = np.random.default_rng(1).random((LENGTH, len(VOCAB)))
    pool, size = np.zeros((trials, k, LENGTH), dtype=np.int16), np.zeros(trials, dtype=int)
    validity, loss, seqs = [], [], []
    for c in range(cycles):
        cands = gen.propose(pool, size, n, np.nan if c == 0 else rate, fresh)
        valid = is_valid(cands.seqs)
        score = table[np.arange(LENGTH), cands.seqs].sum(axis=-1)
        new, new_size = top_k(cands.seqs, score, valid, k, rng)
        keep = new_size == 0
        pool = np.where(keep[:, None, None], pool, new)
        size = np.where(keep, size, new_size)
        gen.refine(new, new_size)
        validity.append(valid.mean(axis=1))
        loss.append(gen.last_loss.copy())
        seqs.append(cands.seqs)
    return np.array(validity), np.array(loss), seqs


@pytest.fixture(scope="module")
def learning():
    return run_loop(LearnedConfig(**SMALL))


def test_first_cycle_validity_is_near_the_papers_44_percent():
    validity, _, _ = run_loop(LearnedConfig(), trials=8, cycles=1)
    assert 0.3 <= validity.mean() <= 0.5


@pytest.mark.slow
def test_validity_rises_through_fine_tuning(learning):
    validity = learning[0].mean(axis=1)
    assert validity[-3:].mean() - validity[:3].mean() >= 0.2


@pytest.mark.slow
def test_fine_tuning_loss_falls(learning):
    loss = np.nanmean(learning[1], axis=1)
    assert np.isfinite(loss).all()
    assert loss[-3:].mean() < 0.8 * loss[:3].mean()


@pytest.mark.slow
def test_without_learning_validity_does_not_trend():
    validity = run_loop(LearnedConfig(**SMALL, lr=0.0))[0].mean(axis=1)
    assert abs(validity[-3:].mean() - validity[:3].mean()) < 0.1


def test_templates_are_rewritten_where_written_and_copied_elsewhere():
    rng = np.random.default_rng(5)
    gen = LearnedGenerator(LearnedConfig(**SMALL), trials=3, length=LENGTH, vocab=30, rng=rng)
    from archrefine.space import KNOWN_ARRAY

    pool = np.broadcast_to(KNOWN_ARRAY[:10].astype(np.int16), (3, 10, LENGTH)).copy()
    size = np.array([10, 4, 0])
    cands = gen.propose(pool, size, 40, 0.3, 0.25)
    assert cands.seqs.shape == (3, 40, LENGTH) and cands.written.shape == cands.seqs.shape
    assert cands.written[2].all()  # an empty pool: everything is written fresh
    assert cands.written[0, :10].all() and not cands.written[0, 10:].all()  # 25% fresh
    copied = ~cands.written[0, 10:]
    templates_rows = {tuple(r) for r in KNOWN_ARRAY[:10]}
    for seq, mask in zip(cands.seqs[0, 10:], copied):
        assert any(np.array_equal(seq[mask], np.array(r)[mask]) for r in templates_rows)
    assert 0.2 < cands.written[0, 10:].mean() < 0.4
    assert gen.validity(cands) is None


def test_same_seed_same_candidates_other_seed_others():
    cfg = LearnedConfig(**SMALL)
    a = run_loop(cfg, cycles=3, fresh=0.3, seed=7)
    b = run_loop(cfg, cycles=3, fresh=0.3, seed=7)
    c = run_loop(cfg, cycles=3, fresh=0.3, seed=8)
    for x, y in zip(a[2], b[2]):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a[1], b[1])
    assert not all(np.array_equal(x, z) for x, z in zip(a[2], c[2]))


def test_pretraining_is_deterministic_without_the_cache():
    from archrefine.sim.learned import _Pretraining

    cfg = LearnedConfig()
    (p, steps, validity), (q, steps2, validity2) = (
        _Pretraining(cfg, len(VOCAB), LENGTH, 123).until(cfg.target_validity) for _ in "ab"
    )
    assert (steps, validity) == (steps2, validity2)
    assert all(torch.equal(p[k], q[k]) for k in p)


def test_a_kept_pretraining_run_continued_to_a_higher_target_is_a_fresh_run():
    from archrefine.sim.learned import _Pretraining

    cfg = LearnedConfig(pretrain_steps=40)
    kept = _Pretraining(cfg, len(VOCAB), LENGTH, 7)
    low = kept.until(0.05)
    for target in (0.3, 0.05, 1.0):  # continue, answer from the kept bests, run to the end
        p, step, validity = kept.until(target)
        q, step2, validity2 = _Pretraining(cfg, len(VOCAB), LENGTH, 7).until(target)
        assert (step, validity) == (step2, validity2)
        assert all(torch.equal(p[k], q[k]) for k in p)
    assert low[1] <= step and step == 40  # no probe of 40 steps reaches validity 1.0


def test_lora_trains_only_the_adapters():
    rng = np.random.default_rng(2)
    gen = LearnedGenerator(
        LearnedConfig(**SMALL, lora_rank=4), trials=2, length=LENGTH, vocab=30, rng=rng
    )
    base = {k: v.clone() for k, v in gen.params.items()}
    cands = gen.propose(np.zeros((2, 10, LENGTH), np.int16), np.zeros(2, int), 30, np.nan, 0.3)
    valid = is_valid(cands.seqs)
    pool, size = top_k(cands.seqs, valid.astype(float), valid, 10, rng)
    size[1] = 0  # a trial with nothing selected does not move
    lora_before = {k: v.detach().clone() for k, v in gen.lora.items()}
    gen.refine(pool, size)
    assert all(torch.equal(base[k], v) for k, v in gen.params.items())
    assert any(not torch.equal(lora_before[k][0], v[0]) for k, v in gen.lora.items())
    assert all(torch.equal(lora_before[k][1], v[1]) for k, v in gen.lora.items())
    assert np.isfinite(gen.last_loss[0]) and np.isnan(gen.last_loss[1])


def test_heads_must_divide_the_width():
    with pytest.raises(ValueError, match="heads"):
        LearnedConfig(d_model=30, heads=4)


def test_only_the_grounded_space_is_supported():
    with pytest.raises(ValueError, match="grounded"):
        LearnedGenerator(
            LearnedConfig(), trials=1, length=10, vocab=30, rng=np.random.default_rng()
        )


def _entropy_per_position(seqs: np.ndarray) -> float:
    """Mean over trials and positions of the entropy (nats) of the sampled tokens."""
    counts = np.stack([(seqs == v).sum(axis=1) for v in range(len(VOCAB))], axis=-1)
    p = counts / counts.sum(axis=-1, keepdims=True)
    return float(-(p * np.log(np.where(p > 0, p, 1))).sum(axis=-1).mean())


def test_temperature_span_makes_a_higher_rate_sample_more_diversely():
    from archrefine.space import KNOWN_ARRAY

    pool = np.broadcast_to(KNOWN_ARRAY[:10].astype(np.int16), (2, 10, LENGTH)).copy()
    size = np.full(2, 10)

    def draw(rate: float, span: float) -> np.ndarray:
        cfg = LearnedConfig(**SMALL, temperature_span=span)
        gen = LearnedGenerator(cfg, trials=2, length=LENGTH, vocab=30, rng=np.random.default_rng(4))
        return gen.propose(pool, size, 200, rate, 1.0).seqs  # all fresh: only T differs

    low, high = draw(0.1, 2.0), draw(0.9, 2.0)
    assert _entropy_per_position(high) > _entropy_per_position(low) + 0.2
    distinct = [len({tuple(r) for r in s[t]}) for s in (low, high) for t in range(2)]
    assert sum(distinct[2:]) >= sum(distinct[:2])
    # without a span the rate does not reach the sampling distribution: same draws
    np.testing.assert_array_equal(draw(0.1, 0.0), draw(0.9, 0.0))
    gen = LearnedGenerator(
        LearnedConfig(temperature=0.8, temperature_span=1.0),
        trials=1, length=LENGTH, vocab=30, rng=np.random.default_rng(4),
    )  # fmt: skip
    assert gen.temperature(0.7) == pytest.approx(1.5) and gen.temperature(np.nan) == 0.8


def test_adam_is_the_per_tensor_formula_bit_for_bit_and_skips_inactive_trials():
    from archrefine.sim.transformer import Adam

    shapes = [(2, 31, 8), (2, 8, 24), (2, 2, 8)]
    gen = torch.Generator().manual_seed(0)
    grads = [[torch.randn(s, generator=gen) * (i + 1) for s in shapes] for i in range(6)]
    fast = [torch.randn(s, generator=gen) for s in shapes]
    slow, ms = [q.clone() for q in fast], [torch.zeros(s) for s in shapes]
    vs = [torch.zeros(s) for s in shapes]
    opt, on = Adam(fast, 1e-2), torch.ones(2, dtype=torch.bool)
    (b1, b2), eps = opt.betas, opt.eps
    for t, gs in enumerate(grads[:5], start=1):  # the per-tensor step it replaced
        opt.step(fast, gs, on)
        steps = torch.full((2, 1, 1), float(t))
        c1, c2 = 1 - b1**steps, 1 - b2**steps
        for q, g, m, v in zip(slow, gs, ms, vs):
            m.copy_(b1 * m + (1 - b1) * g)
            v.copy_(b2 * v + (1 - b2) * g * g)
            q.sub_(1e-2 * (m / c1) / ((v / c2).sqrt() + eps))
    assert all(torch.equal(a, b) for a, b in zip(fast, slow))
    assert all(torch.equal(a, b) for a, b in zip(opt.m, ms))
    before = [q.clone() for q in fast]
    whole = [q.clone() for q in fast]
    twin = Adam(whole, 1e-2)
    twin._m.copy_(opt._m), twin._v.copy_(opt._v), twin.t.copy_(opt.t)
    twin.step(whole, grads[5], on)
    opt.step(fast, grads[5], torch.tensor([True, False]))  # trial 1 has nothing to learn
    assert all(torch.equal(a[0], b[0]) for a, b in zip(fast, whole))  # same step for trial 0
    assert all(torch.equal(a[1], b[1]) for a, b in zip(fast, before))  # trial 1 untouched
    assert opt.t.tolist() == [6, 5]


def test_targets_that_stop_at_the_same_probe_give_the_same_pretrained_model():
    from archrefine.sim import learned
    from archrefine.sim.learned import _pretrained, same_stop

    cfg = LearnedConfig(pretrain_steps=40, target_validity=0.08)
    p, step, validity = _pretrained(cfg.model_dump_json(), len(VOCAB), LENGTH, 11)
    records = learned.LAST_PRETRAINING
    assert records[-1] == (step, validity) and all(v < cfg.target_validity for _, v in records[:-1])
    lower = records[-2][1] if len(records) > 1 else 0.0
    for other in (lower + 1e-9, (lower + validity) / 2, validity, validity + 1e-6, lower):
        q = _pretrained(
            cfg.model_copy(update={"target_validity": other}).model_dump_json(),
            len(VOCAB), LENGTH, 11,
        )[0]  # fmt: skip
        same = all(torch.equal(p[k], q[k]) for k in p)
        assert same_stop(records, cfg.target_validity, other) == same
        assert same == (lower < other <= validity)
    assert not same_stop((), 0.4, 0.4)


class _ConcatCache:
    """The key-value cache `KVCache` replaced: the prefix concatenated at every position."""

    def __init__(self):
        self.filled, self.layers = 0, []

    def extend(self, layer, k, v):
        if layer < len(self.layers):
            k = torch.cat([self.layers[layer][0], k], dim=-2)
            v = torch.cat([self.layers[layer][1], v], dim=-2)
            self.layers[layer] = (k, v)
        else:
            self.layers.append((k, v))
        return k, v


def test_the_preallocated_cache_decodes_bit_for_bit_as_concatenation_did():
    from archrefine.sim.transformer import KVCache, forward, init_params, sample

    cfg, g = LearnedConfig(d_model=16, heads=2), torch.Generator().manual_seed(3)
    one = init_params(cfg, len(VOCAB), LENGTH, g)
    p = {k: v.expand(2, *v.shape[1:]).clone() for k, v in one.items()}
    tokens = torch.randint(len(VOCAB), (2, 5, LENGTH), generator=g)
    tokens[..., 0] = len(VOCAB)  # BOS
    new, old = KVCache(LENGTH), _ConcatCache()
    with torch.no_grad():
        for i in range(LENGTH):
            step = tokens[..., i : i + 1]
            a, b = forward(p, {}, step, cfg.heads, new), forward(p, {}, step, cfg.heads, old)
            assert torch.equal(a, b)
        whole = forward(p, {}, tokens, cfg.heads)
    assert new.filled == old.filled == LENGTH
    assert torch.allclose(a[..., -1, :], whole[..., -1, :], atol=1e-5)  # and it is a cache
    # sampling under inference mode draws what it drew under no_grad
    base, write = torch.zeros(2, 7, LENGTH, dtype=torch.long), torch.ones(2, 7, LENGTH, dtype=bool)
    drawn = sample(p, {}, base, write, cfg, torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = sample.__wrapped__(p, {}, base, write, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(drawn, plain)
