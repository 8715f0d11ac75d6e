import numpy as np
import pandas as pd
import pytest

from archrefine import Config, simulate
from archrefine.sim.loop import Archive
from archrefine.sim.selection import top_k

SMALL = Config(trials=8, seed=3).with_overrides({"loop.cycles": 12})


def test_metrics_frame_shape_and_columns():
    m = simulate(SMALL).metrics
    assert list(m.columns[:6]) == ["trial", "cycle", "validity", "novelty", "diversity", "fitness"]
    assert len(m) == 8 * 12 and m.cycle.min() == 1 and m.cycle.max() == 12
    assert m[["validity", "novelty", "diversity"]].apply(lambda s: s.between(0, 1).all()).all()


def test_result_columns_are_by_trial_then_cycle_and_final_skips_nan():
    r = simulate(SMALL)
    m = r.metrics
    assert list(r.columns) == list(m.columns)
    assert m.equals(m.sort_values(["trial", "cycle"], ignore_index=True))
    assert (m.groupby("trial").cycle.apply(list) == [list(range(1, 13))] * 8).all()
    expected = r.mean().iloc[-1].to_dict()
    assert r.final() == pytest.approx(expected, rel=1e-12)
    r.columns["fitness"][m.cycle.to_numpy() == 12] = np.nan  # no valid candidate at the end
    r.columns["validity"][(m.cycle.to_numpy() == 12) & (m.trial.to_numpy() == 0)] = np.nan
    last = r.final()
    assert np.isnan(last["fitness"])  # as groupby's mean of nothing, and without a warning
    assert last["validity"] == pytest.approx(m[m.cycle == 12].validity.iloc[1:].mean())


def test_same_seed_same_results_other_seed_other_results():
    a, b = simulate(SMALL).metrics, simulate(SMALL).metrics
    pd.testing.assert_frame_equal(a, b)
    c = simulate(SMALL.with_overrides({"seed": 4})).metrics
    assert not np.allclose(a.validity, c.validity)


def test_validity_rises_only_through_learning():
    base = Config(trials=20, seed=11)
    learned = simulate(base).mean().validity
    assert learned.iloc[-3:].mean() - learned.iloc[:3].mean() > 0.3
    frozen = (
        simulate(base.with_overrides({"generator.bonus_rate": 0.0, "generator.prior_rate": 0.0}))
        .mean()
        .validity
    )
    assert abs(frozen.iloc[-3:].mean() - frozen.iloc[:3].mean()) < 0.05


def test_stronger_selection_concentrates_the_population():
    base = Config(trials=20, seed=5)
    strict = simulate(base.with_overrides({"loop.top_k": 1})).mean()
    loose = simulate(base.with_overrides({"loop.top_k": 50})).mean()
    assert strict.diversity.iloc[-1] < loose.diversity.iloc[-1]
    assert strict.fitness.iloc[-1] > loose.fitness.iloc[-1]


def test_first_cycle_is_fresh_samples_from_a_uniform_prior():
    m = simulate(Config(trials=30, seed=1)).mean()
    assert m.diversity.iloc[0] == pytest.approx(1 - 1 / 30, abs=0.01)


def test_top_k_selects_the_best_valid_candidates():
    rng = np.random.default_rng(0)
    seqs = np.arange(2 * 5 * 3).reshape(2, 5, 3)
    score = np.array([[0.1, 0.9, 0.5, 0.7, 0.3], [0.2, 0.1, 0.0, 0.4, 0.3]])
    valid = np.array([[1, 0, 1, 1, 1], [0, 0, 1, 0, 0]], dtype=bool)
    pool, size = top_k(seqs, score, valid, 3, rng)
    assert size.tolist() == [3, 1]
    assert [tuple(r) for r in pool[0]] == [tuple(seqs[0, i]) for i in (3, 2, 4)]
    assert tuple(pool[1, 0]) == tuple(seqs[1, 2])


def test_archive_appends_masked_rows_per_trial():
    known = np.zeros((2, 1, 2), dtype=np.int16)
    arc = Archive(known, capacity=4)
    seqs = np.array([[[1, 1], [2, 2], [3, 3]], [[4, 4], [5, 5], [6, 6]]], dtype=np.int16)
    arc.add(seqs, np.array([[False, True, True], [True, False, False]]))
    assert arc.filled.tolist() == [3, 2]
    assert arc.rows[0, 1:3, 0].tolist() == [2, 3] and arc.rows[1, 1, 0] == 4


@pytest.mark.parametrize("policy", ["selected", "valid", "all"])
def test_archive_policies_run(policy):
    m = simulate(SMALL.with_overrides({"loop.archive": policy})).mean()
    assert m.novelty.notna().all()


def _generator(temperature: float, span: float, prior: np.ndarray):
    from archrefine.sim.paper import PaperGenerator

    cfg = Config().generator.model_copy(
        update={"temperature": temperature, "temperature_span": span}
    )
    gen = PaperGenerator(cfg, trials=1, length=1, vocab=3, rng=np.random.default_rng(0))
    gen.prior = prior.reshape(1, 1, 3).copy()
    return gen


def test_decoding_temperature_draws_from_the_tempered_prior():
    prior = np.array([0.6, 0.3, 0.1])
    gen = _generator(0.5, 0.5, prior)
    # at rate 0.2 the temperature is 0.5 + 0.5 * 0.2 = 0.6: p ∝ prior ** (1 / 0.6)
    want = prior ** (1 / 0.6) / (prior ** (1 / 0.6)).sum()
    assert gen.sampling(0.2)[0, 0] == pytest.approx(want)
    draws = gen.sample(20_000, 0.2)[0, :, 0]
    freq = np.bincount(draws, minlength=3) / draws.size
    assert np.abs(freq - want).max() < 0.015
    # cycle 1 (no rate) decodes at the base temperature; temperature 1 is the prior itself
    assert gen.sampling(float("nan"))[0, 0] == pytest.approx(prior**2 / (prior**2).sum())
    assert _generator(1.0, 0.0, prior).sampling(0.7)[0, 0] == pytest.approx(prior)


def test_a_uniform_prior_is_unchanged_by_temperature():
    flat = np.full(3, 1 / 3)
    assert _generator(0.2, 0.0, flat).sampling(0.5)[0, 0] == pytest.approx(flat)


def test_colder_decoding_collapses_diversity_faster():
    """Fine-tuning on tempered samples sharpens the prior every round (model collapse)."""
    base = Config(trials=20, seed=8).with_overrides({"generator.temperature_span": 0.0})
    cold = simulate(base.with_overrides({"generator.temperature": 0.6})).mean()
    warm = simulate(base.with_overrides({"generator.temperature": 1.0})).mean()
    assert cold.diversity.iloc[0] == pytest.approx(warm.diversity.iloc[0], abs=0.01)
    assert cold.diversity.iloc[-1] < warm.diversity.iloc[-1] - 0.05
    # and the fall continues after validity has levelled off (the last third of the run)
    assert cold.diversity.iloc[-1] < cold.diversity.iloc[-8] - 0.02
