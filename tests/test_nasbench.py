"""The nasbench-graph space against the raw benchmark data, read with the package's own reader."""

import numpy as np
import pytest

nbg = pytest.importorskip("nas_bench_graph")

from archrefine.space.nasbench import (  # noqa: E402
    DATASETS,
    LENGTH,
    OPS,
    NasBenchGraph,
    decode,
    encode,
    parse,
)


@pytest.fixture(scope="module")
def cora():
    return NasBenchGraph("cora"), nbg.light_read("cora")


def raw_cell(key: int) -> tuple[list[int], list[str]]:
    """The package's (link, ops) of a benchmark key, decoded the way `Arch.hash_arch` built it."""
    digits = [(key // 10**i) % 10 for i in (3, 2, 1, 0)]
    return list(nbg.architecture.link_list[key // 10**4]), [nbg.gnn_list[d] for d in digits]


def test_every_sampled_benchmark_cell_is_valid_with_its_stored_accuracy(cora):
    space, bench = cora
    keys = np.random.default_rng(0).choice(sorted(bench), 500, replace=False)
    seqs = np.array([encode(*raw_cell(int(k))) for k in keys])
    assert space.is_valid(seqs).all()
    assert space.fitness(seqs).tolist() == [bench[int(k)]["valid_perf"] for k in keys]
    assert space.fitness(seqs, "test").tolist() == [bench[int(k)]["perf"] for k in keys]
    test_space = NasBenchGraph("cora", metric="test")
    assert test_space.fitness(seqs).tolist() == [bench[int(k)]["perf"] for k in keys]
    with pytest.raises(ValueError, match="metric"):
        space.fitness(seqs, "accuracy")


def test_all_cells_are_covered_once(cora):
    space, bench = cora
    archs = space.archs()
    assert space.n_archs == len(bench) == 26_206 == len(archs)
    assert space.is_valid(archs).all()
    assert len(np.unique(space.rows(archs))) == space.n_archs
    assert np.array_equal(space.canonical(archs), archs)


def test_isomorphic_sequences_share_the_package_hash(cora):
    space, bench = cora
    rng = np.random.default_rng(1)
    link = np.stack([np.zeros(300, int)] + [rng.integers(0, k + 1, 300) for k in (1, 2, 3)], 1)
    ops = rng.integers(0, len(OPS), (300, 4))
    seqs = np.array([encode(li, [OPS[o] for o in op]) for li, op in zip(link, ops, strict=True)])
    expect = []
    for li, op in zip(link, ops, strict=True):
        names = [OPS[o] for o in op]
        key = None if set(names) == {"skip"} else nbg.Arch(li.tolist(), names).valid_hash()
        expect.append(np.nan if key is None else bench[key]["valid_perf"])
    np.testing.assert_array_equal(space.fitness(seqs), expect)
    canon = space.canonical(seqs)
    np.testing.assert_array_equal(space.fitness(canon), expect)


def test_random_sequences_are_mostly_invalid_and_score_nan(cora):
    space, _ = cora
    seqs = np.random.default_rng(2).integers(0, space.vocab, (2, 5_000, LENGTH))
    valid = space.is_valid(seqs)
    assert valid.shape == (2, 5_000) and valid.mean() < 0.01
    fit = space.fitness(seqs)
    assert np.isnan(fit[~valid]).all() and not np.isnan(fit[valid]).any()


def test_malformed_cells_are_invalid(cora):
    space, _ = cora
    good = encode([0, 1, 1, 2], ["gcn", "gat", "sage", "fc"])
    assert space.is_valid(good)
    for pos, tok in [(2, 2), (6, 4), (1, 0), (3, 13), (0, -1)]:  # forward edge, op as input...
        bad = good.copy()
        bad[pos] = tok
        assert not space.is_valid(bad), (pos, tok)
    assert not space.is_valid(encode([0, 0, 0, 0], ["skip"] * 4))
    with pytest.raises(ValueError, match="shape"):
        space.is_valid(np.zeros((3, 7), int))


def test_encode_decode_round_trip(cora):
    space, _ = cora
    for seq in space.archs()[::997]:
        text = decode(seq)
        assert "not a cell" not in text
        assert np.array_equal(parse(text), seq)
    assert decode(encode([0, 1, 1, 2], ["gcn", "gat", "sage", "fc"])) == (
        "n1=gcn(in) n2=gat(n1) n3=sage(n1) n4=fc(n2) -> n3+n4"
    )
    assert decode([99] * LENGTH).startswith("not a cell:")
    with pytest.raises(ValueError, match="ops"):
        encode([0, 0, 0, 0], ["gcn", "gcn", "gcn", "conv"])


def test_known_are_measured_hand_designed_cells(cora):
    space, _ = cora
    known = space.known(25, np.random.default_rng(3))
    assert known.shape == (25, LENGTH) and space.is_valid(known).all()
    assert len(np.unique(known[:10], axis=0)) == 10  # the 10 anchors before any repeat
    assert np.array_equal(known, space.known(25, np.random.default_rng(3)))
    proteins = NasBenchGraph("proteins")
    assert proteins.n_archs == 2_021 and proteins.is_valid(proteins.known(8, 0)).all()


def test_unknown_dataset_lists_the_available_ones():
    with pytest.raises(ValueError, match="cora, citeseer") as err:
        NasBenchGraph("imagenet")
    assert "\n" not in str(err.value) and len(DATASETS) == 9
