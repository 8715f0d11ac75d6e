"""The batched checker against the ground truth (PyTorch builds and runs) on >= 10,000 sequences.

The sweep mixes uniform random sequences (mostly invalid, failing in every way) with point
mutations, shifts and crossovers of KNOWN and of valid sequences (about half valid, many invalid
in only one place), so both verdicts and every rule are exercised near the boundary.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from archrefine.space import KNOWN, KNOWN_ARRAY, LENGTH, VOCAB, SpaceSpec, explain, is_valid
from archrefine.space.check import _columns, _scan

torch = pytest.importorskip("torch")
from archrefine.space.builder import runs, runs_many  # noqa: E402  (needs torch)

N_TOKENS = len(VOCAB)


def mutate(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1-3 substitutions per row; a sixth of the rows also get an insertion (the tail shifts
    right) and a sixth a deletion (the tail shifts left, a no-op fills the end)."""
    n = len(base)
    out = base.copy()
    rows = np.arange(n)
    edits = rng.integers(1, 4, n)
    for k in range(3):
        hit = rows[edits > k]
        out[hit, rng.integers(0, LENGTH, hit.size)] = rng.integers(0, N_TOKENS, hit.size)
    j, at, kind = np.arange(LENGTH), rng.integers(0, LENGTH, (n, 1)), rng.integers(0, 6, (n, 1))
    src = np.where((kind == 0) & (j > at), j - 1, np.where((kind == 1) & (j >= at), j + 1, j))
    shifted = np.take_along_axis(out, np.minimum(src, LENGTH - 1), axis=1)
    shifted[(kind == 0) & (j == at)] = rng.integers(0, N_TOKENS, n)[(kind == 0)[:, 0]]
    shifted[(kind == 1) & (j == LENGTH - 1)] = 0
    return shifted


def crossover(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cut = rng.integers(1, LENGTH, len(a))[:, None]
    return np.where(np.arange(LENGTH) < cut, a, b)


def sweep_sequences(seed: int = 0, spec: SpaceSpec = SpaceSpec()) -> np.ndarray:
    """10,000 sequences: 3,000 random, 3,000 KNOWN mutants, 3,000 mutants of valid random
    sequences, 1,000 crossovers of KNOWN with valid random sequences."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, N_TOKENS, (400_000, LENGTH))
    valid = pool[is_valid(pool, spec)]
    known = KNOWN_ARRAY[rng.integers(0, len(KNOWN_ARRAY), 4000)]
    parts = [
        rng.integers(0, N_TOKENS, (3000, LENGTH)),
        mutate(known[:3000], rng),
        mutate(valid[rng.integers(0, len(valid), 3000)], rng),
        crossover(known[3000:], valid[rng.integers(0, len(valid), 1000)], rng),
    ]
    return np.concatenate(parts).astype(np.int64)


@pytest.fixture(scope="module")
def pool():
    """Worker processes for the ground truth: fresh ones (spawn), as fork is unsafe once
    torch has started its thread pool; started once for the module."""
    workers = max(1, min(4, len(os.sched_getaffinity(0))))
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as executor:
        yield executor


def ground_truth(pool, seqs: np.ndarray, spec: SpaceSpec = SpaceSpec()) -> np.ndarray:
    """`builder.runs` on every sequence, split over the pool."""
    chunks = np.array_split(seqs, 32)
    return np.concatenate(list(pool.map(runs_many, chunks, [spec] * len(chunks))))


@pytest.mark.slow
@pytest.mark.torch
def test_checker_agrees_with_pytorch_on_ten_thousand_sequences(pool):
    seqs = sweep_sequences(seed=0)
    assert len(seqs) >= 10_000
    start = time.perf_counter()
    truth = ground_truth(pool, seqs)
    fast = is_valid(seqs)
    bad = np.flatnonzero(truth != fast)
    report = [f"{seqs[i].tolist()} truth={truth[i]} is_valid={fast[i]}" for i in bad[:10]]
    assert bad.size == 0, "\n".join(report)
    # The sweep is only a proof if it holds many of both verdicts and trips every rule.
    assert 0.25 < truth.mean() < 0.75, truth.mean()
    codes = _scan(_columns(seqs), SpaceSpec(), detail=True).code
    assert set(np.unique(codes)) == set(range(11)), np.unique(codes)
    seconds = time.perf_counter() - start
    print(f"sweep: {len(seqs)} sequences, {truth.mean():.1%} valid, {seconds:.1f} s")


@pytest.mark.slow
@pytest.mark.torch
def test_checker_agrees_with_pytorch_on_another_spec(pool):
    """Odd sizes (28 -> 14 -> 7 -> 3), one input channel and 16 classes (so group norm after
    the head is legal) move every boundary."""
    spec = SpaceSpec(channels=1, size=28, classes=16)
    seqs = sweep_sequences(seed=1, spec=spec)[::5]
    truth = ground_truth(pool, seqs, spec)
    fast = is_valid(seqs, spec)
    assert np.array_equal(truth, fast), seqs[truth != fast][:10]
    assert 0.2 < truth.mean() < 0.8
    assert all(
        (explain(s, spec) is None) == t for s, t in zip(seqs[:300], truth[:300], strict=True)
    )


specs = st.builds(
    SpaceSpec,
    channels=st.sampled_from([1, 3, 8, 16]),
    size=st.integers(1, 33),
    classes=st.sampled_from([2, 10, 16, 64, 128]),
)


@st.composite
def sequences(draw):
    """Uniform random, or a KNOWN architecture with one to three positions redrawn."""
    if draw(st.booleans()):
        return draw(st.lists(st.integers(0, N_TOKENS - 1), min_size=LENGTH, max_size=LENGTH))
    s = list(draw(st.sampled_from(list(KNOWN.values()))))
    for _ in range(draw(st.integers(1, 3))):
        s[draw(st.integers(0, LENGTH - 1))] = draw(st.integers(0, N_TOKENS - 1))
    return s


GN = [VOCAB.index(name) for name in ("groupnorm", "gap", "head", "relu", "none")]


@pytest.mark.torch
@settings(max_examples=100, deadline=None)
@given(sequences(), specs)
@example(  # groups of one value: PyTorch's group_norm refuses them (found by this test in CI)
    s=[0, 16, 17, 22, 2, 16, 17, 2, 16, 23, 17, 13, 29, 0, 0], spec=SpaceSpec(8, 1, 2)
)
@example(s=[GN[1], GN[0], GN[2]] + [GN[4]] * (LENGTH - 3), spec=SpaceSpec(8, 4, 10))  # flat
@example(s=[GN[0], GN[3], GN[1], GN[2]] + [GN[4]] * (LENGTH - 4), spec=SpaceSpec(8, 2, 10))
def test_checker_agrees_with_pytorch_for_any_spec(s, spec):
    """Specs move every boundary: odd and tiny sizes, inputs whose width already divides 4
    or 8, and class counts a linear layer or gap can hit without the head."""
    assert bool(is_valid(s, spec)) == runs(s, spec), explain(s, spec)
