"""Interventions beyond schedules (sim/interventions.py), each on a case whose answer is known."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from archrefine import Config
from archrefine.core.config import ConfigError
from archrefine.sim.elites import EliteArchive, descriptors
from archrefine.sim.interventions import Steering, compact
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


def test_accumulate_and_elitism_off_are_the_plain_loop():
    _same(
        {
            "intervention.accumulate": False,
            "intervention.elite_share": 0.0,
            "intervention.elite_rate": 0.3,
            "intervention.replay_window": 3,
        }
    )


def test_accumulate_fine_tunes_on_every_earlier_selection_in_the_window():
    steer, _ = _steering(1, **{"intervention.accumulate": True, "intervention.replay_window": 2})
    rng = np.random.default_rng(0)
    sizes = [np.array([4, 2]), np.array([3, 0]), np.array([4, 4]), np.array([1, 4])]
    for c, size in enumerate(sizes):
        pool = np.full((2, 4, 5), c, dtype=np.int16)
        rows, count, signal = steer.training_set(pool, size, rng)
        window = sizes[max(c - 2, 0) : c + 1]  # this cycle and the two before
        assert list(count) == [sum(s[t] for s in window) for t in range(2)]
        np.testing.assert_array_equal(signal, size / 4)  # the step: this cycle's fullness only
        for t in range(2):
            want = [c - i for i, s in enumerate(window[::-1]) for _ in range(s[t])]
            assert list(rows[t, : count[t], 0]) == want  # newest first, every row once


def test_accumulate_teaches_more_tokens_than_k_slots_can_hold():
    # Three cycles of k = 2 rows, every row a different token: with prior_rate 1 and no
    # smoothing the prior becomes exactly the fine-tuning set's frequencies. Drawn replay holds
    # at most k = 2 tokens per position; accumulation holds all six, each at 1/6.
    config = Config(trials=1, seed=0).with_overrides(
        {
            "loop.population": 8,
            "loop.top_k": 2,
            "generator.prior_rate": 1.0,
            "generator.smoothing": 0.0,
        }  # fmt: skip
    )
    supports = {}
    for name, over in {
        "accumulate": {"intervention.accumulate": True},
        "replay": {"intervention.replay": 0.5},
    }.items():
        cfg = config.with_overrides(over)
        gen = PaperGenerator(
            cfg.generator, trials=1, length=3, vocab=30, rng=np.random.default_rng(0)
        )
        steer = Steering(cfg, 3, 30, gen)
        rng = np.random.default_rng(1)
        for c in range(3):
            pool = np.array([[[2 * c] * 3, [2 * c + 1] * 3]], dtype=np.int16)
            gen.refine(*steer.training_set(pool, np.array([2]), rng))
        supports[name] = (gen.prior[0] > 0).sum(axis=1)
    assert (supports["accumulate"] == 6).all() and (supports["replay"] <= 2).all()
    assert gen.bonus[0] == pytest.approx(3 * config.generator.bonus_rate)  # full steps only


def test_elite_children_copy_the_best_valid_candidate_so_far():
    steer, gen = _steering(
        1, **{"intervention.elite_share": 0.25, "intervention.elite_rate": 0.0,
              "intervention.selection": "novelty", "intervention.novelty_weight": 1e6}
    )  # fmt: skip
    assert steer.n_elite == 2
    pool, size = np.zeros((2, 4, 5), dtype=np.int16), np.zeros(2, dtype=int)
    first = steer.propose(gen, pool, size, 8, float("nan"), 0.0)
    assert first.seqs.shape == (2, 8, 5) and first.written.all()  # cycle 1: all written
    seqs = np.arange(2 * 8 * 5, dtype=np.int16).reshape(2, 8, 5) % 30
    fit = np.array([[0.1, 0.9, 0.2, 0.3, 0.95, 0, 0, 0], [0.5] * 8])
    nov = np.array([[1.0, 0, 0, 0, 0, 0, 0, 0], [0.0] * 8])  # novelty decides the selection
    valid = np.array([[True, True, True, True, False, True, True, True], [False] * 8])
    steer.select(seqs, fit, nov, valid, 4, np.random.default_rng(0))
    kids = steer.propose(gen, seqs[:, :4], np.array([4, 0]), 8, 0.5, 0.0)
    # trial 0: the fittest valid candidate (1, not the invalid 4 nor the most novel 0), copied
    # exactly at elite_rate 0; trial 1 has found nothing valid: its elite slots are written
    assert (kids.seqs[0, 6:] == seqs[0, 1]).all() and not kids.written[0, 6:].any()
    assert kids.written[1, 6:].all()
    better = fit.copy()
    better[0, 2] = 0.99
    steer.select(seqs, better, nov, valid, 4, np.random.default_rng(0))
    assert (steer.best_seq[0] == seqs[0, 2]).all() and steer.best_fit[0] == 0.99
    steer.select(seqs, fit * 0, nov, valid, 4, np.random.default_rng(0))
    assert steer.best_fit[0] == 0.99  # a worse cycle does not replace the best so far


def test_elitism_without_failures_never_loses_the_best_fitness():
    # With no failures beyond the written tokens (ceiling 1) and elite children copied exactly,
    # a trial's best fitness can only rise once something valid is found.
    config = LONG.with_overrides(
        {
            "generator.ceiling": 1.0,
            "intervention.elite_share": 0.04,
            "intervention.elite_rate": 0.0,
        }  # fmt: skip
    )
    best = simulate(config).metrics.pivot(index="cycle", columns="trial", values="best_fitness")
    for t in best.columns:
        after = best[t].loc[best[t].first_valid_index() :]
        assert after.notna().all()  # once found, an exact copy is valid every cycle
        assert (after.diff().iloc[1:] >= -1e-12).all()
    plain = simulate(LONG.with_overrides({"generator.ceiling": 1.0})).metrics
    assert (
        (plain.pivot(index="cycle", columns="trial", values="best_fitness").diff() < 0).any().any()
    )


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


def test_map_elites_loads_only_pyribs_grid_and_gives_the_whole_packages_numbers():
    """`import ribs.archives` pulls in scikit-learn, scipy, numba and torch (~250 MB); the
    simulator loads only the grid's module, with numpy-groupies' numpy `aggregate`, and leaves
    `import ribs.archives` (and torch) working as usual afterwards: the same archives, tie-heavy
    batches included."""
    pytest.importorskip("ribs")
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from archrefine.sim.elites import EliteArchive\n"
        "lean = type(EliteArchive(2, 4, 3, 'abstract', 8, 0).grids[0])\n"
        "heavy = [m for m in ('sklearn', 'scipy', 'numba', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert not any(m.startswith('ribs') for m in sys.modules), 'a stub package stayed'\n"
        "from ribs.archives import CVTArchive, GridArchive\n"
        "assert GridArchive is not lean\n"
        "rng = np.random.default_rng(1)\n"
        "for case in range(100):\n"
        "    n, cells = int(rng.integers(1, 60)), int(rng.integers(1, 5))\n"
        "    batches = [(rng.integers(0, 30, (n, 5)).astype(float),\n"
        "                rng.integers(0, 3, n).astype(float), rng.random((n, 2)))\n"
        "               for _ in range(3)]\n"
        "    found = []\n"
        "    for cls in (lean, GridArchive):\n"
        "        grid = cls(solution_dim=5, dims=[cells, cells], ranges=[(0.0, 1.0)] * 2,\n"
        "                   seed=3, dtype=np.float64)\n"
        "        for batch in batches:\n"
        "            grid.add(*batch)\n"
        "        found.append(grid.data())\n"
        "    for key in ('solution', 'objective', 'measures', 'index'):\n"
        "        assert np.array_equal(found[0][key], found[1][key]), key\n"
        "import torch\n"
        "assert torch.zeros(1).shape == (1,)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]


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
    with pytest.raises(ConfigError, match="replay and accumulate"):
        SMALL.with_overrides({"intervention.replay": 0.5, "intervention.accumulate": True})
    with pytest.raises(ConfigError, match="accumulate needs generator.kind 'paper'"):
        SMALL.with_overrides(
            {"space.kind": "grounded", "generator.kind": "learned", "intervention.accumulate": True}
        )
    with pytest.raises(ConfigError, match="candidates left after intervention.elite_share"):
        Config().with_overrides(
            {"loop.population": 10, "intervention.islands": 6, "intervention.elite_share": 0.5}
        )


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
        {
            "intervention.accumulate": True,
            "intervention.replay_window": 3,
            "intervention.elite_share": 0.1,
            "intervention.elite_rate": 0.2,
        },
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
