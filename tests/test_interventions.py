"""Interventions beyond schedules (sim/interventions.py), each on a case whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from archrefine import Config
from archrefine.core.config import ConfigError
from archrefine.sim.interventions import EliteArchive, Steering, compact, descriptors
from archrefine.sim.loop import simulate
from archrefine.sim.paper import PaperGenerator
from archrefine.sim.selection import scored, top_k

SMALL = Config(trials=6, seed=11).with_overrides({"loop.cycles": 8, "loop.population": 20})
LONG = Config(trials=4, seed=11).with_overrides({"loop.cycles": 14})
COLS = ["validity", "novelty", "diversity", "fitness", "best_fitness"]


def _same(over: dict, base: Config = SMALL) -> None:
    pd.testing.assert_frame_equal(
        simulate(base.with_overrides(over)).metrics, simulate(base).metrics
    )


def test_novelty_selection_with_huge_lambda_picks_the_most_novel():
    rng = np.random.default_rng(0)
    seqs = rng.integers(0, 30, size=(3, 12, 5)).astype(np.int16)
    fit = rng.random((3, 12))
    nov = np.stack([rng.permutation(12) / 12 for _ in range(3)])
    pool, size = top_k(seqs, scored(fit, nov, "novelty", 1e6), np.ones((3, 12), bool), 4, rng)
    for t in range(3):
        want = np.argsort(-nov[t])[:4]
        assert size[t] == 4
        np.testing.assert_array_equal(pool[t], seqs[t, want])


def test_novelty_selection_with_lambda_zero_is_top_k_exactly():
    fit, nov = np.random.default_rng(1).random((2, 2, 9))
    assert scored(fit, nov, "novelty", 0.0) is fit
    _same({"intervention.selection": "novelty", "intervention.novelty_weight": 0.0})


def test_novelty_selection_changes_the_run():
    over = {"intervention.selection": "novelty", "intervention.novelty_weight": 1.0}
    assert (
        not simulate(LONG.with_overrides(over)).metrics[COLS].equals(simulate(LONG).metrics[COLS])
    )


def test_one_island_is_no_islands():
    _same(
        {
            "intervention.islands": 1,
            "intervention.migrants": 3,
            "intervention.migration_interval": 1,
        }
    )


def _steering(islands: int, **over) -> tuple[Steering, PaperGenerator]:
    config = Config(trials=2, seed=0).with_overrides(
        {"loop.population": 8, "loop.top_k": 4, "intervention.islands": islands, **over}
    )
    rng = np.random.default_rng(0)
    gen = PaperGenerator(config.generator, trials=2, length=5, vocab=30, rng=rng)
    return Steering(config, 5, 30, gen), gen


def test_islands_mutate_only_their_own_templates():
    steer, gen = _steering(2)
    steer.templates[:, :2] = 7  # island 0's slots
    steer.templates[:, 2:] = 9  # island 1's slots
    steer.sizes[:] = 2
    cands = steer.propose(gen, None, None, 8, 0.0, 0.0)  # rate 0, nothing fresh: pure copies
    assert (cands.seqs[:, :4] == 7).all() and (cands.seqs[:, 4:] == 9).all()


def test_migration_moves_the_best_templates_to_the_next_island():
    steer, _ = _steering(2, **{"intervention.migrants": 1, "intervention.migration_interval": 1})
    seqs = np.zeros((2, 8, 5), dtype=np.int16)
    seqs[:, :, 0] = np.arange(8)  # candidate j is recognisable by its first token
    fit = np.tile(np.array([5.0, 1, 2, 0, 0.5, 0.4, 0.3, 0.2]), (2, 1))
    valid = np.ones((2, 8), bool)
    steer.cycle = 1
    pool, size = steer.select(seqs, fit, np.zeros((2, 8)), valid, 4, np.random.default_rng(0))
    # island 0 (candidates 0-3) keeps 0, 2; island 1 (4-7) keeps 4, 5, then 4 migrates to island
    # 0 and 0 to island 1, each replacing the worst template
    assert (steer.templates[:, :, 0] == [0, 4, 4, 0]).all()
    assert (size == 4).all() and sorted(pool[0, :, 0]) == [0, 0, 4, 4]


def test_replay_zero_is_no_replay():
    _same({"intervention.replay": 0.0, "intervention.replay_window": 2})


def test_replay_draws_the_fine_tuning_set_from_earlier_selections():
    steer, _ = _steering(1, **{"intervention.replay": 0.5, "intervention.replay_window": 1})
    rng = np.random.default_rng(0)
    first = np.full((2, 4, 5), 3, dtype=np.int16)
    got, size = steer.training_set(first, np.array([4, 4]), rng)
    assert got is first and (size == 4).all()  # nothing earlier yet
    second = np.full((2, 4, 5), 8, dtype=np.int16)
    got, size = steer.training_set(second, np.array([4, 1]), rng)
    assert (got[0, :, 0] == [8, 8, 3, 3]).all() and size[0] == 4  # 2 of 4 slots replayed
    assert (got[1, :3, 0] == [8, 3, 3]).all() and size[1] == 3  # 1 selected + 2 replayed
    third = np.full((2, 4, 5), 1, dtype=np.int16)
    got, _ = steer.training_set(third, np.array([4, 4]), rng)
    assert set(got[:, 2:, 0].ravel()) == {8}  # window 1: only the cycle before


def test_map_elites_keeps_at_most_one_elite_per_cell_and_the_best_of_each():
    cells, trials, n, d = 3, 2, 200, 6
    rng = np.random.default_rng(4)
    seqs = rng.integers(0, 30, size=(trials, n, d)).astype(np.int16)
    score = rng.random((trials, n))
    valid = rng.random((trials, n)) < 0.8
    arc = EliteArchive(trials, d, cells, "abstract", 30, seed=0)
    arc.add(seqs, score, valid)
    desc = descriptors(seqs, "abstract", 30)
    for t, grid in enumerate(arc.grids):
        data = grid.data()
        assert len(data["index"]) == len(set(data["index"])) <= cells * cells
        cell = np.minimum((desc[t] * cells).astype(int), cells - 1)
        ids = cell[:, 0] * cells + cell[:, 1]
        best = {i: score[t][valid[t] & (ids == i)].max() for i in set(ids[valid[t]])}
        assert sorted(data["objective"]) == pytest.approx(sorted(best.values()))
    pool, size = arc.select(4, d, np.random.default_rng(0))
    assert (size == 4).all()


def test_map_elites_run_selects_only_valid_elites():
    over = {"intervention.qd": "map-elites", "intervention.qd_cells": 4}
    frame = simulate(SMALL.with_overrides(over)).metrics
    assert frame.pool_size.max() <= SMALL.loop.top_k and frame.validity.notna().all()


def test_descriptors_of_a_known_network_and_of_token_statistics():
    from archrefine.space import token_id

    names = ["conv3_16", "relu", "linear_64", "head", "conv3_64"] + ["none"] * 10
    seq = np.array([[token_id(x) for x in names]])
    depth, width = descriptors(seq, "grounded", 30)[0]
    assert depth == pytest.approx(3 / 15) and width == pytest.approx((16 + 64) / 2 / 128)
    stats = descriptors(np.array([[0, 0, 29, 29]]), "abstract", 30)[0]
    assert stats == pytest.approx([0.5, 0.5])


def test_temperature_mutation_with_span_zero_is_the_constant_schedule():
    over = {"intervention.mutation": "temperature", "intervention.temperature_span": 0.0}
    cyclic = simulate(SMALL.with_overrides({**over, "schedule.kind": "cyclic"})).metrics
    constant = simulate(SMALL).metrics
    pd.testing.assert_frame_equal(cyclic[COLS], constant[COLS])
    hot = {**over, "intervention.temperature_span": 2.0, "schedule.kind": "cyclic"}
    assert not simulate(SMALL.with_overrides(hot)).metrics[COLS].equals(constant[COLS])


def test_compact_moves_kept_rows_first():
    pool = np.arange(8).reshape(1, 4, 2)
    got, size = compact(pool, np.array([[False, True, False, True]]))
    assert size[0] == 2 and (got[0, :2, 0] == [2, 6]).all()


def test_bad_combinations_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="islands and qd"):
        SMALL.with_overrides({"intervention.islands": 2, "intervention.qd": "map-elites"})
    with pytest.raises(ConfigError, match="must not exceed loop.top_k"):
        SMALL.with_overrides({"intervention.islands": 11})
    with pytest.raises(ConfigError, match="intervention.selection"):
        SMALL.with_overrides({"intervention.selection": "best"})


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    "over",
    [
        {
            "intervention.islands": 3,
            "intervention.migration_interval": 2,
            "intervention.replay": 0.4,
        },
        {"intervention.qd": "map-elites", "intervention.qd_cells": 3},
    ],
)
def test_a_killed_run_resumes_bit_exactly_with_stateful_interventions(tmp_path, over):
    config = LONG.with_overrides({**over, "loop.cycles": 7})
    whole = simulate(config).metrics

    def stop(cycle: int) -> None:
        if cycle == 4:
            raise _Stop

    with pytest.raises(_Stop):
        simulate(config, checkpoint=tmp_path / "ck", on_cycle=stop)
    resumed = simulate(config, checkpoint=tmp_path / "ck", resume=True).metrics
    pd.testing.assert_frame_equal(resumed, whole)
