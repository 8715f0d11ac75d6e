import itertools

import numpy as np
import pytest

from archrefine.core.metrics import diversity, hamming, novelty, token_counts


def brute_diversity(pop):
    n, d = pop.shape
    pairs = list(itertools.combinations(range(n), 2))
    return np.mean([np.mean(pop[i] != pop[j]) for i, j in pairs])


def brute_novelty(x, archive, k):
    dists = sorted(np.mean(x != a) for a in archive)
    return np.mean(dists[: min(k, len(dists))])


@pytest.mark.parametrize("seed", range(5))
def test_diversity_matches_all_pairs(seed):
    rng = np.random.default_rng(seed)
    vocab = int(rng.integers(2, 8))
    pops = rng.integers(0, vocab, size=(3, int(rng.integers(2, 12)), int(rng.integers(1, 9))))
    got = diversity(pops, vocab)
    assert np.allclose(got, [brute_diversity(p) for p in pops])


def test_diversity_extremes():
    same = np.zeros((1, 10, 5), dtype=int)
    assert diversity(same, 4)[0] == 0.0
    distinct = np.arange(4)[None, :, None].repeat(3, axis=2)
    assert diversity(distinct, 4)[0] == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_novelty_matches_brute_force_with_ragged_archives(seed):
    rng = np.random.default_rng(seed)
    trials, n, d, vocab, cap, k = 3, 6, 7, 4, 9, 4
    seqs = rng.integers(0, vocab, (trials, n, d))
    archive = rng.integers(0, vocab, (trials, cap, d))
    filled = np.array([cap, 2, 5])  # trial 1's archive is smaller than k
    got = novelty(seqs, archive, filled, k)
    for t in range(trials):
        want = [brute_novelty(x, archive[t, : filled[t]], k) for x in seqs[t]]
        assert np.allclose(got[t], want)


def test_novelty_of_empty_archive_is_nan():
    seqs = np.zeros((2, 3, 4), dtype=int)
    assert np.isnan(novelty(seqs, np.zeros((2, 5, 4), dtype=int), np.array([0, 0]), 3)).all()


def test_hamming_and_counts_against_loops():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 5, (2, 4, 6)), rng.integers(0, 5, (2, 3, 6))
    h = hamming(a, b)
    for t, i, j in itertools.product(range(2), range(4), range(3)):
        assert h[t, i, j] == np.sum(a[t, i] != b[t, j])
    counts = token_counts(a, 5, mask=np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool))
    assert counts[0].sum() == 2 * 6 and counts[1].sum() == 4 * 6
    assert counts[0, 2, a[0, 0, 2]] >= 1
