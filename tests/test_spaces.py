"""Every space runs through the same loop; validity there is real, never drawn."""

import numpy as np
import pytest

from archrefine import Config, ConfigError, simulate


def test_grounded_validity_is_the_exact_checker_and_learning_raises_it():
    space = pytest.importorskip("archrefine.space")
    cfg = Config(trials=20, seed=4).with_overrides({"space.kind": "grounded"})
    m = simulate(cfg).mean()
    assert m.validity.iloc[:3].mean() < 0.05  # uniform sequences: ~1.4% valid
    assert m.validity.iloc[-3:].mean() > m.validity.iloc[:3].mean() + 0.1
    assert space.is_valid(space.KNOWN_ARRAY).all()


def test_grounded_canonical_distances_see_through_padding():
    pytest.importorskip("rapidfuzz")
    base = Config(trials=4, seed=1).with_overrides({"space.kind": "grounded", "loop.cycles": 3})
    ham = simulate(base).mean()
    can = simulate(base.with_overrides({"space.distance": "canonical"})).mean()
    assert np.allclose(ham.validity, can.validity)  # same run, other distance
    assert not np.allclose(ham.diversity, can.diversity)


def test_nasbench_graph_scores_by_measured_accuracy():
    pytest.importorskip("nas_bench_graph")
    from archrefine.space.nasbench import NasBenchGraph

    cfg = Config(trials=3, seed=2).with_overrides(
        {"space.kind": "nasbench-graph", "loop.cycles": 4}
    )
    m = simulate(cfg).metrics
    assert m.validity.min() > 0.9  # the space's format makes nearly every cell measured
    bench = NasBenchGraph("cora")
    assert m.fitness.between(0, 1).all() and bench.length == 8


def test_first_epoch_fitness_runs_through_the_loop():
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    cfg = Config(trials=1, seed=0).with_overrides(
        {
            "space.kind": "grounded",
            "fitness.kind": "first-epoch",
            "fitness.max_train": 60,
            "fitness.workers": 1,
            "loop.cycles": 2,
            "loop.population": 20,
            "loop.top_k": 5,
        }
    )
    m = simulate(cfg).metrics
    valid = m[m.validity > 0]
    assert valid.fitness.between(0, 1).all()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fitness.kind": "benchmark"}, "needs space.kind = 'nasbench-graph'"),
        ({"fitness.kind": "first-epoch"}, "needs space.kind = 'grounded'"),
        ({"space.kind": "grounded", "space.length": 12}, "length and vocab apply to the abstract"),
        ({"space.distance": "canonical"}, "needs space.kind = 'grounded'"),
    ],
)
def test_space_and_fitness_must_fit_together(overrides, message):
    with pytest.raises(ConfigError, match=message):
        Config().with_overrides(overrides)


def test_learned_generator_runs_through_the_loop_and_records_its_loss():
    pytest.importorskip("torch")
    cfg = Config(trials=2, seed=0).with_overrides(
        {
            "space.kind": "grounded",
            "generator.kind": "learned",
            "loop.cycles": 3,
            "generator.learned.steps": 2,
            "generator.learned.batch": 8,
        }
    )
    m = simulate(cfg).metrics
    assert m.validity.iloc[0] > 0.1  # pre-trained on KNOWN: far above the 1.4% of random
    assert m.loss.notna().any() and m.bonus.isna().all()
    with pytest.raises(ConfigError, match="needs space.kind = 'grounded'"):
        Config().with_overrides({"generator.kind": "learned"})
