import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archrefine import Config, simulate
from archrefine.core import fast, knn, metrics
from archrefine.sim import paper

FAISS = ("faiss", "faiss-bytes")
needs_faiss = pytest.mark.skipif(
    not knn.has_faiss(), reason="faiss-cpu is not installed (pip install 'archrefine[scale]')"
)
needs_numba = pytest.mark.skipif(
    not fast.available(), reason="numba is not installed (pip install 'archrefine[fast]')"
)
MARKS = {"faiss": needs_faiss, "faiss-bytes": needs_faiss, "numba": needs_numba}
ALL = [pytest.param(m, marks=MARKS[m]) if m in MARKS else m for m in (*knn.METHODS, "auto")]


@pytest.fixture
def no_numba(monkeypatch):
    """As if numba were not installed (whether or not it is loaded in this process)."""
    monkeypatch.setattr(fast, "available", lambda: False)
    monkeypatch.setattr(fast, "loaded", lambda: False)
    monkeypatch.setattr(fast, "_LOADED", [])


def brute(seqs, archive, filled, k):
    """One query and one archive row at a time: sort every distance, average the first k."""
    trials, n, d = seqs.shape
    out = np.full((trials, n), np.nan)
    for t in range(trials):
        rows = archive[t, : filled[t]]
        for i in range(n):
            dist = sorted(int(np.sum(seqs[t, i] != r)) for r in rows)
            if dist:
                out[t, i] = sum(dist[:k]) / (min(k, len(dist)) * d)
    return out


@st.composite
def problems(draw, d=None, vocab=None):
    trials = draw(st.integers(1, 3))
    n = draw(st.integers(1, 6))
    d = d or draw(st.integers(1, 20))
    vocab = vocab or draw(st.sampled_from([1, 2, 3, 5, 30, 40, 300]))
    cap = draw(st.integers(1, 25))
    filled = np.array(draw(st.lists(st.integers(0, cap), min_size=trials, max_size=trials)))
    k = draw(st.integers(1, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    seqs = rng.integers(0, vocab, (trials, n, d)).astype(np.int16)
    archive = rng.integers(0, vocab, (trials, cap, d)).astype(np.int16)
    if draw(st.booleans()):  # copies of queries and of rows: exact ties and distance 0
        archive[:, : min(cap, n)] = seqs[:, : min(cap, n)]
        archive[:, cap // 2 :] = archive[:, :1]
    return seqs, archive, filled, k


def check(method, seqs, archive, filled, k):
    width = int(filled.max())
    vocab = max(int(seqs.max()), int(archive[:, :width].max(initial=0))) + 1
    if method in ("faiss-bytes", "numba") and width > 0 and vocab > 256:
        with pytest.raises(ValueError, match="tokens < 256"):
            knn.novelty(seqs, archive, filled, k, method)
        return
    got = knn.novelty(seqs, archive, filled, k, method)
    assert np.array_equal(got, brute(seqs, archive, filled, k), equal_nan=True)


@pytest.mark.parametrize("method", ALL)
@settings(max_examples=60, deadline=None)
@given(problem=problems())
def test_equals_brute_force_on_small_inputs(method, problem):
    check(method, *problem)


@pytest.mark.parametrize("method", ALL)
@settings(max_examples=25, deadline=None)
@given(problem=problems(d=15, vocab=30))
def test_equals_brute_force_at_the_paper_shape(method, problem):
    check(method, *problem)


@pytest.mark.parametrize("method", ALL)
def test_blocks_merge_exactly(method, monkeypatch):
    """Many archive blocks, query blocks and faiss calls: the running k smallest is exact."""
    monkeypatch.setattr(knn, "BLOCK", dict.fromkeys(knn.BLOCK, 40))
    monkeypatch.setattr(knn, "ROWS", 7)
    monkeypatch.setattr(knn, "FAISS_ROWS", 9)
    monkeypatch.setattr(knn, "NUMBA_ROWS", 8)
    rng = np.random.default_rng(0)
    seqs = rng.integers(0, 4, (3, 11, 6)).astype(np.int16)
    archive = rng.integers(0, 4, (3, 60, 6)).astype(np.int16)
    filled = np.array([60, 5, 23])
    for k in (1, 4, 15, 80):
        check(method, seqs, archive, filled, k)


def test_simulator_novelty_is_the_knn_novelty():
    rng = np.random.default_rng(1)
    seqs = rng.integers(0, 30, (4, 50, 15)).astype(np.int16)
    archive = rng.integers(0, 30, (4, 270, 15)).astype(np.int16)
    filled = np.array([270, 100, 14, 0])
    want = knn.novelty(seqs, archive, filled, 15, "numpy")
    assert np.array_equal(metrics.novelty(seqs, archive, filled, 15), want, equal_nan=True)
    assert np.isnan(want[3]).all() and not np.isnan(want[:3]).any()


def test_empty_archive_is_nan_for_every_method():
    seqs = np.zeros((2, 3, 4), dtype=np.int16)
    for method in (*knn.METHODS, "auto"):
        got = knn.novelty(seqs, np.zeros((2, 5, 4), np.int16), np.array([0, 0]), 3, method)
        assert np.isnan(got).all()


def test_bad_arguments():
    seqs, archive, filled = np.zeros((1, 2, 3), int), np.zeros((1, 4, 3), int), np.array([4])
    with pytest.raises(ValueError, match="unknown kNN method"):
        knn.novelty(seqs, archive, filled, 2, "annoy")
    with pytest.raises(ValueError, match="at least 1"):
        knn.novelty(seqs, archive, filled, 0)


def test_auto_rule(no_numba):
    small = np.zeros((1, 50, 15), np.int16)
    assert knn.choose(small, np.zeros((1, 40, 15), np.int16)) == "numpy"  # 2,000 pairs
    want = "faiss-bytes" if knn.has_faiss() else "numpy"
    assert knn.choose(small, np.zeros((1, 270, 15), np.int16)) == want  # 13,500 pairs
    wide = np.full((1, 50, 15), 300, np.int16)  # tokens past a byte
    assert knn.choose(wide, np.zeros((1, 270, 15), np.int16)) == "numpy"


@needs_numba
def test_auto_loads_numba_for_large_calls_only(monkeypatch):
    """numba's start-up (~0.5 s of CPU) is paid only for a call with NUMBA_PAIRS query × row
    pairs; once loaded, every call uses it."""
    monkeypatch.setattr(fast, "loaded", lambda: False)
    small = np.zeros((1, 50, 15), np.int16)
    assert knn.choose(small, np.zeros((1, 270, 15), np.int16)) != "numba"
    assert knn.choose(np.zeros((1000, 50, 15), np.int16), np.zeros((1000, 100, 15), np.int16)) == (
        "numba"
    )  # 5,000,000 pairs
    monkeypatch.setattr(fast, "loaded", lambda: True)
    assert knn.choose(small, np.zeros((1, 40, 15), np.int16)) == "numba"
    huge = np.zeros((1, 5000, 15), np.int16), np.zeros((1, 30000, 15), np.int16)  # ≥ PARALLEL
    assert knn.choose(*huge) == ("faiss-bytes" if knn.has_faiss() else "numba")
    wide = np.full((1, 50, 15), 300, np.int16)  # tokens past a byte
    assert knn.choose(wide, np.zeros((1, 270, 15), np.int16)) == "numpy"


@st.composite
def cdfs(draw):
    """Cumulative distributions with zero-probability tokens (flat steps) and draws that hit
    the steps exactly, 0, and values just below 1."""
    trials, d, vocab, n = (draw(st.integers(1, 4)) for _ in range(4))
    vocab += 1
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    p = rng.random((trials, d, vocab)) ** 3
    p[rng.random(p.shape) < 0.3] = 0.0
    p[..., 0] += 1e-3
    cdf = np.cumsum(p / p.sum(axis=2, keepdims=True), axis=2)
    u = rng.random((trials, n * 3, d))
    u[:, :n] = cdf[:, None, :, rng.integers(0, vocab)]  # exactly on a step
    u[:, n : n + 1] = 0.0
    u[:, n + 1 : n + 2] = np.nextafter(1.0, 0.0)
    return cdf, u


@needs_numba
@settings(max_examples=40, deadline=None)
@given(problem=cdfs())
def test_compiled_sampling_equals_the_numpy_count(problem):
    cdf, u = problem
    fast.kernels()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fast, "loaded", lambda: False)
        want = paper.sample_categorical(cdf, u)
    got = fast.kernels().sample_categorical(cdf, u)
    assert got.dtype == want.dtype and np.array_equal(got, want)


@st.composite
def proposals(draw):
    """`cdfs`' distributions and draws (on the steps, 0, just below 1), with templates,
    mutation draws on both sides of the rate, fresh rows, and costs that are infinite where a
    format would forbid a token."""
    cdf, u = draw(cdfs())
    trials, n, d = u.shape
    vocab = cdf.shape[2]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rate = draw(st.floats(0.0, 1.0))
    mutate_u = rng.random(u.shape)
    mutate_u[rng.random(u.shape) < 0.2] = rate  # exactly at the rate: not mutated
    pool = rng.integers(0, vocab, (trials, 3, d)).astype(np.int16)
    pick = rng.integers(0, 3, (trials, n))
    fresh_rows = rng.integers(0, n + 1, trials)
    cost = rng.exponential(size=(trials, d, vocab))
    cost[rng.random(cost.shape) < 0.2] = np.inf
    return (cdf, u, mutate_u, rate, pick, pool, fresh_rows), cost


@needs_numba
@settings(max_examples=60, deadline=None)
@given(problem=proposals())
def test_compiled_proposal_and_costs_equal_numpy(problem):
    """The fused kernels (children in one pass, written cost, token counts) against their numpy
    twins: the same tokens, the same written mask, the same sums bit for bit (NaN where an
    unwritten forbidden token multiplies inf by 0), the same counts."""
    args, cost = problem
    vocab, pool = args[0].shape[2], args[5]
    mask = np.arange(pool.shape[1])[None, :] < (args[6] % 4)[:, None]  # pool rows in use

    def run(compiled: bool):
        with pytest.MonkeyPatch.context() as mp, np.errstate(invalid="ignore"):
            mp.setattr(fast, "loaded", lambda: compiled)
            seqs, written = paper.children(*args)
            sums = paper.written_cost(cost, seqs, written)
            counts = metrics.token_counts(seqs, vocab), metrics.token_counts(pool, vocab, mask)
        return seqs, written, sums, counts

    fast.kernels()
    (seqs, written, sums, counts), want = run(True), run(False)
    assert seqs.dtype == want[0].dtype and np.array_equal(seqs, want[0])
    assert np.array_equal(written, want[1])
    assert np.array_equal(sums, want[2], equal_nan=True)
    for a, b in zip(counts, want[3], strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


@needs_numba
def test_compiled_token_counts_refuse_a_token_outside_the_vocabulary():
    fast.kernels()
    for token in (4, -1):  # vocabulary 0..3: a write past the counts' end, or before it
        with pytest.raises(ValueError, match="outside the vocabulary"):
            metrics.token_counts(np.full((1, 2, 3), token, np.int16), 4)


@needs_numba
def test_simulation_is_identical_with_and_without_numba(monkeypatch):
    """The compiled kernels change the speed, never a number: a run that uses them from its
    first cycle equals the numpy-only run bit for bit."""
    cfg = Config(trials=30, seed=3).with_overrides(
        {"schedule.kind": "cosine", "loop.archive": "valid", "loop.cycles": 8}
    )
    calls = []
    numba_sums = knn._numba_sums
    monkeypatch.setattr(knn, "_numba_sums", lambda *a: calls.append(1) or numba_sums(*a))
    monkeypatch.setattr(knn, "NUMBA_PAIRS", 0)  # numba from the first cycle
    compiled = simulate(cfg).metrics
    assert len(calls) == 8
    monkeypatch.setattr(fast, "available", lambda: False)
    monkeypatch.setattr(fast, "loaded", lambda: False)
    plain = simulate(cfg).metrics
    assert len(calls) == 8
    pd.testing.assert_frame_equal(compiled, plain, check_exact=True)


def test_without_faiss(monkeypatch, no_numba):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss raises ImportError
    knn.has_faiss.cache_clear()
    try:
        seqs = np.zeros((1, 50, 15), np.int16)
        archive = np.ones((1, 1000, 15), np.int16)
        assert knn.choose(seqs, archive) == "numpy"
        assert (knn.novelty(seqs, archive, np.array([1000]), 15) == 1.0).all()
        with pytest.raises(ImportError, match=r"need faiss-cpu: pip install") as err:
            knn.novelty(seqs, archive, np.array([1000]), 15, "faiss")
        assert "\n" not in str(err.value)
    finally:
        knn.has_faiss.cache_clear()


def test_faiss_code_sizes():
    assert knn.faiss_code_bytes(15 * 30) == 64  # 450 bits → 512
    assert [knn.faiss_code_bytes(b) for b in (1, 64, 65, 200, 513, 600)] == [8, 8, 16, 32, 72, 80]
    codes = knn.onehot_bits(np.array([[0, 2], [1, 2]]), 3, 8)
    assert np.unpackbits(codes, axis=1, bitorder="little")[:, :6].tolist() == [
        [1, 0, 0, 0, 0, 1],
        [0, 1, 0, 0, 0, 1],
    ]


def test_method_numba_without_numba_is_one_clear_error(no_numba):
    seqs, archive = np.zeros((1, 2, 3), np.int16), np.zeros((1, 4, 3), np.int16)
    with pytest.raises(ImportError, match=r"needs numba: pip install") as err:
        knn.novelty(seqs, archive, np.array([4]), 2, "numba")
    assert "\n" not in str(err.value)
    # the failed request loads nothing: sampling and `auto` stay on numpy
    assert not fast.loaded() and knn.choose(seqs, archive) != "numba"
    cdf = np.cumsum(np.full((1, 3, 4), 0.25), axis=2)
    assert paper.sample_categorical(cdf, np.full((1, 2, 3), 0.6)).tolist() == [[[2] * 3] * 2]
