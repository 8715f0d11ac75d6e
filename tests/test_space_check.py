"""The batched checker: input handling, one example per rule, and properties (no torch)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archrefine.space import (
    KNOWN,
    KNOWN_ARRAY,
    LENGTH,
    VOCAB,
    InvalidArchitecture,
    Shape,
    SpaceSpec,
    canonical,
    explain,
    is_valid,
    token_id,
    trace,
)
from archrefine.space import check as check_module


def seq(words: str) -> list[int]:
    ids = [token_id(w) for w in words.split()]
    return ids + [0] * (LENGTH - len(ids))


random_seqs = st.lists(st.integers(0, len(VOCAB) - 1), min_size=LENGTH, max_size=LENGTH)


@st.composite
def known_mutants(draw):
    """A KNOWN sequence with a few positions redrawn: near the validity boundary."""
    base = list(draw(st.sampled_from(list(KNOWN.values()))))
    for _ in range(draw(st.integers(1, 3))):
        base[draw(st.integers(0, LENGTH - 1))] = draw(st.integers(0, len(VOCAB) - 1))
    return base


near_or_random = st.one_of(random_seqs, known_mutants())


# --- input handling --------------------------------------------------------------------


def test_result_shape_follows_the_leading_axes():
    one = KNOWN["vgg"]
    assert is_valid(one).shape == () and bool(is_valid(one))
    assert is_valid(KNOWN_ARRAY).shape == (len(KNOWN),)
    stacked = np.stack([KNOWN_ARRAY, KNOWN_ARRAY[::-1]])
    assert is_valid(stacked).shape == (2, len(KNOWN))
    assert is_valid(np.zeros((0, LENGTH), np.int64)).shape == (0,)
    assert is_valid([list(one), seq("head")]).tolist() == [True, False]


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.int32, np.int64])
def test_any_integer_dtype_gives_the_same_answer(dtype):
    rng = np.random.default_rng(0)
    seqs = np.concatenate([KNOWN_ARRAY, rng.integers(0, 30, (500, LENGTH))])
    assert np.array_equal(is_valid(seqs.astype(dtype)), is_valid(seqs))


def test_rejects_floats_and_ids_outside_the_vocabulary():
    with pytest.raises(TypeError, match="integer"):
        is_valid(np.zeros((2, LENGTH)))
    with pytest.raises(ValueError, match="0..29"):
        is_valid(np.full((2, LENGTH), 30))
    with pytest.raises(ValueError, match="0..29"):
        explain([-1] + [0] * (LENGTH - 1))
    with pytest.raises(ValueError, match="last axis"):
        is_valid(np.int64(3))


def test_batches_spanning_many_chunks_match_row_by_row():
    rng = np.random.default_rng(1)
    pool = rng.integers(0, 30, (3 * check_module._CHUNK + 17, LENGTH))
    pool[::7] = KNOWN_ARRAY[rng.integers(0, len(KNOWN), len(pool[::7]))]
    fast = is_valid(pool)
    sample = rng.choice(len(pool), 400, replace=False)
    assert all(fast[i] == (explain(pool[i]) is None) for i in sample)
    assert fast[::7].all()


# --- one example per rule --------------------------------------------------------------

RULES = [
    ("head", "position 0 (head): needs a flat (batch, features) input, got (batch, 3, 32, 32)"),
    ("conv3_16 linear_64 head", "position 1 (linear_64): needs a flat"),
    ("flatten conv3_16 head", "position 1 (conv3_16): needs a (batch, channels, height, width)"),
    ("gap se head", "position 1 (se): needs a (batch, channels"),
    (
        "conv5v_16 maxpool2 conv5v_16 maxpool2 maxpool2 conv5v_16 gap head",
        "position 5 (conv5v_16): 5x5",
    ),
    ("patch4_64 patch4_64 maxpool2 maxpool2 gap head", "position 3 (maxpool2): 2x2 window"),
    ("attn gap head", "position 0 (attn): needs a width divisible by 4, got (batch, 3, 32, 32)"),
    ("conv3_16 gap head groupnorm", None),  # after the head: never built
    ("conv3_16 gap groupnorm linear_64 head", None),
    ("groupnorm gap head", "position 0 (groupnorm): needs a width divisible by 8"),
    ("conv3_16 res_close gap head", "position 1 (res_close): no res_open to close"),
    ("res_open conv3_16 maxpool2 res_close gap head", "position 3 (res_close): the skip from"),
    ("res_open conv3_16 gap res_close head", "position 3 (res_close): the skip from position 0"),
    ("conv3_16 res_open relu gap head", "position 1 (res_open): never closed by a res_close"),
    ("conv3_16 relu", "end: output is (batch, 16, 32, 32), expected (batch, 10)"),
    ("flatten linear_64", "end: output is (batch, 64), expected (batch, 10)"),
    ("res_open conv3_64 res_close gap head", None),  # 3 -> 64 channels: projected skip
    ("flatten res_open linear_64 res_close head", None),  # flat skips project too
]


@pytest.mark.parametrize(("words", "message"), RULES)
def test_each_rule_is_explained_at_its_first_failing_position(words, message):
    got = explain(seq(words))
    if message is None:
        assert got is None
        assert bool(is_valid(seq(words)))
    else:
        assert got is not None and got.startswith(message), got
        assert "\n" not in got
        assert not is_valid(seq(words))


def test_known_architectures_need_no_explanation():
    assert all(explain(s) is None for s in KNOWN.values())


def test_tokens_after_the_head_are_ignored():
    tail = [token_id(w) for w in ("conv3_16", "res_close", "attn", "maxpool2")]
    for s in KNOWN.values():
        n = len(canonical(s))
        mutated = list(s[:n]) + (tail * 4)[: LENGTH - n]
        assert explain(mutated) is None


def test_spec_moves_the_boundaries():
    small = SpaceSpec(channels=1, size=4, classes=64)
    assert explain(seq("patch4_64 gap"), small) is None  # 64 features = 64 classes
    assert "2x2 window" in explain(seq("patch4_64 maxpool2 gap head"), small)
    assert explain(seq("conv3_16 gap head groupnorm"), SpaceSpec(classes=16)) is None


def test_trace_gives_every_shape_and_refuses_invalid_sequences():
    shapes = trace(KNOWN["lenet5"])
    assert shapes[0] == Shape(True, 3, 32) and len(shapes) == LENGTH + 1
    assert Shape(True, 16, 5) in shapes and Shape(False, 400, 0) in shapes
    assert str(shapes[-1]) == "(batch, 10)"
    with pytest.raises(InvalidArchitecture, match="position 0"):
        trace(seq("head"))


def test_uniform_random_validity_matches_the_documented_fraction():
    """docs/space.md reports 1.38%; a rule change that moves it should update the docs."""
    rng = np.random.default_rng(12345)
    fraction = is_valid(rng.integers(0, 30, (200_000, LENGTH))).mean()
    assert 0.011 < fraction < 0.017, fraction


# --- properties ------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(near_or_random)
def test_is_valid_is_explain_returning_none(s):
    assert bool(is_valid(s)) == (explain(s) is None)


@settings(max_examples=200, deadline=None)
@given(near_or_random, st.data())
def test_moving_noops_changes_nothing(s, data):
    """Validity depends on the canonical form only."""
    body = [t for t in s if t]
    slots = st.lists(
        st.integers(0, LENGTH - 1), min_size=len(body), max_size=len(body), unique=True
    )
    spread = [0] * LENGTH
    for p, t in zip(sorted(data.draw(slots)), body, strict=True):
        spread[p] = t
    assert canonical(spread) == canonical(s)
    assert bool(is_valid(spread)) == bool(is_valid(s))


@settings(max_examples=200, deadline=None)
@given(near_or_random)
def test_the_first_failure_does_not_depend_on_later_tokens(s):
    message = explain(s)
    if message is None or message.startswith("end") or "never closed" in message:
        return
    pos = int(message.split()[1])
    assert explain(list(s[: pos + 1]) + [0] * (LENGTH - pos - 1)) == message
