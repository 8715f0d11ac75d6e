"""First-epoch fitness packs small networks into shared tasks and gives costly ones their own."""

from __future__ import annotations

from archrefine.sandbox.training import pack


def test_costly_networks_go_alone_and_small_ones_share_tasks_of_about_one_share():
    costs = [100.0, 60.0] + [1.0] * 40  # costliest first, as FirstEpochFitness orders them
    groups = pack(costs, workers=2)  # share = 200 / 8 = 25
    assert groups[0] == [0] and groups[1] == [1]
    assert sorted(i for g in groups for i in g) == list(range(len(costs)))  # each index once
    small = groups[2:]
    assert all(sum(costs[i] for i in g) <= 25 for g in small)
    assert len(small) == 2  # 40 unit networks: two tasks of 25 and 15, not 40 round trips


def test_equal_costs_give_about_four_tasks_per_worker_and_no_empty_ones():
    groups = pack([1.0] * 16, workers=2)
    assert [len(g) for g in groups] == [2] * 8
    assert pack([], workers=3) == []
    assert pack([5.0], workers=4) == [[0]]
