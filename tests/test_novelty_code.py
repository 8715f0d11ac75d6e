"""Novelty of code by MinHash over normalized token shingles: real sketches, real sources."""

from __future__ import annotations

import math
import re

import pytest

pytest.importorskip("datasketch")

from archrefine.code.novelty_code import CodeNovelty, code_tokens  # noqa: E402

try:
    from archrefine import space
except ImportError:  # being written alongside; the tests that need it skip
    space = None
needs_space = pytest.mark.skipif(space is None, reason="archrefine.space is not importable yet")

NET = '''\
import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    """A small VGG-style classifier."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(64, 64, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(64 * 8 * 8, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        x = F.max_pool2d(F.relu(self.conv4(x)), 2)
        x = torch.flatten(x, 1)
        x = F.dropout(F.relu(self.fc1(x)), p=0.5, training=self.training)
        return self.fc2(x)
'''

# Same network, other names, other comments and layout: a copy, not a new idea.
RENAMED = '''\
import torch
import torch.nn as nn
import torch.nn.functional as F

# my novel network!!
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_a = nn.Conv2d(3, 32, kernel_size=3, padding=1)
        self.c_b = nn.Conv2d(32, 32, kernel_size=3, padding=1)  # second conv
        self.c_c = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.c_d = nn.Conv2d(64, 64, kernel_size=3, padding=1)
        self.dense = nn.Linear(64 * 8 * 8, 128)
        self.out = nn.Linear(128, 10)

    def forward(self, inp):
        """Classify."""
        inp = F.relu(self.c_a(inp))
        inp = F.max_pool2d(F.relu(self.c_b(inp)), 2)

        inp = F.relu(self.c_c(inp))
        inp = F.max_pool2d(F.relu(self.c_d(inp)), 2)
        inp = torch.flatten(inp, 1)
        inp = F.dropout(F.relu(self.dense(inp)), p=0.5, training=self.training)
        return self.out(inp)
'''

# A different design: residual, batch norm, global pooling, no dropout.
RESIDUAL = """\
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.GELU())
        self.branch = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, groups=16),
            nn.BatchNorm2d(16),
            nn.GELU(),
            nn.Conv2d(16, 16, 1),
        )
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.branch(x)
        return self.head(x.mean(dim=(2, 3)))
"""


def shingles(source: str, k: int = 10) -> set[str]:
    toks = code_tokens(source)
    k = min(k, len(toks))
    return {" ".join(toks[i : i + k]) for i in range(len(toks) - k + 1)}


def test_tokens_ignore_comments_layout_docstrings_and_names() -> None:
    assert code_tokens(NET) == code_tokens(RENAMED)
    toks = code_tokens(NET)
    assert "conv1" not in toks and "x" not in toks and "VGG" not in " ".join(toks)
    for api in ("Conv2d", "kernel_size", "max_pool2d", "flatten", "dropout", "training"):
        assert api in toks, api  # what the code does is kept
    assert code_tokens(NET.replace("64 * 8 * 8", "64 * 4 * 4")) != toks  # so are numbers


def test_builtins_are_kept_only_where_called() -> None:
    a = "def forward(self, input):\n    return self.fc(input).view(len(input), -1)\n"
    b = "def forward(self, x):\n    return self.fc(x).view(len(x), -1)\n"
    assert code_tokens(a) == code_tokens(b)
    assert "len" in code_tokens(a) and "input" not in code_tokens(a)


def test_tokens_keep_names_imported_from_torch() -> None:
    source = "from torch.nn import Conv2d, ReLU as Act\nlayer = Conv2d(3, 8, 3)\nact = Act()\n"
    toks = code_tokens(source)
    assert toks[-15:] == ["ID", "=", "Conv2d", "(", "3", ",", "8", ",", "3", ")",
                          "ID", "=", "Act", "(", ")"]  # fmt: skip


def test_broken_source_still_tokenizes_up_to_the_problem() -> None:
    toks = code_tokens("import torch\nx = nn.Linear(3,\n")
    assert toks[:2] == ["import", "torch"] and "Linear" in toks


def test_renamed_copy_is_a_near_duplicate() -> None:
    nov = CodeNovelty()
    nov.add("original", NET)
    assert nov.score(RENAMED) == 0.0
    assert nov.is_near_duplicate(RENAMED)
    assert nov.near_duplicates(RENAMED) == ["original"]


def test_structurally_different_net_is_novel_and_not_a_duplicate() -> None:
    nov = CodeNovelty()
    nov.add("vgg-ish", NET)
    assert nov.score(RESIDUAL) > 0.8
    assert not nov.is_near_duplicate(RESIDUAL)


def test_a_small_change_is_similar_but_not_identical() -> None:
    nov = CodeNovelty()
    nov.add("a", NET)
    wider = NET.replace("nn.Linear(64 * 8 * 8, 128)", "nn.Linear(64 * 8 * 8, 256)")
    wider = wider.replace("nn.Linear(128, 10)", "nn.Linear(256, 10)")
    assert 0.0 < nov.score(wider) < 0.3


def test_estimate_tracks_the_exact_jaccard() -> None:
    nov = CodeNovelty(num_perm=256)
    nov.add("net", NET)
    edited = NET.replace("F.relu", "F.gelu", 2).replace("p=0.5", "p=0.2")
    a, b = shingles(NET), shingles(edited)
    exact = len(a & b) / len(a | b)
    assert 0.2 < exact < 0.9  # a case where the estimate has something to estimate
    estimate = 1.0 - nov.score(edited)
    assert abs(estimate - exact) < 4 * math.sqrt(exact * (1 - exact) / 256) + 0.01


def test_empty_archive_scores_one() -> None:
    nov = CodeNovelty()
    assert len(nov) == 0
    assert nov.score(NET) == 1.0
    assert not nov.is_near_duplicate(NET)
    assert nov.similarities(NET) == {}


def test_score_is_against_the_closest_member() -> None:
    nov = CodeNovelty()
    nov.add("residual", RESIDUAL)
    alone = nov.score(NET)
    nov.add("vgg", NET.replace("p=0.5", "p=0.3"))
    assert nov.score(NET) < alone
    sims = nov.similarities(NET)
    assert set(sims) == {"residual", "vgg"} and sims["vgg"] > sims["residual"]
    assert nov.score(NET) == pytest.approx(1.0 - sims["vgg"])


def test_same_seed_same_sketches_and_scores() -> None:
    a, b, c = CodeNovelty(seed=7), CodeNovelty(seed=7), CodeNovelty(seed=8)
    assert list(a.sketch(NET).hashvalues) == list(b.sketch(NET).hashvalues)
    assert list(a.sketch(NET).hashvalues) != list(c.sketch(NET).hashvalues)
    for nov in (a, b):
        nov.add("residual", RESIDUAL)
    assert a.score(NET) == b.score(NET)


def test_threshold_decides_near_duplicates() -> None:
    edited = NET.replace("p=0.5", "p=0.3")
    strict, loose = CodeNovelty(threshold=0.99), CodeNovelty(threshold=0.5)
    for nov in (strict, loose):
        nov.add("net", NET)
    similarity = 1.0 - strict.score(edited)
    assert 0.5 < similarity < 0.99
    assert loose.is_near_duplicate(edited) and not strict.is_near_duplicate(edited)


def test_bad_arguments_and_keys_fail_clearly() -> None:
    with pytest.raises(ValueError, match="shingle: 0 is not an integer >= 1"):
        CodeNovelty(shingle=0)
    with pytest.raises(ValueError, match=r"threshold: 1.5 is not a number in \(0, 1\]"):
        CodeNovelty(threshold=1.5)
    with pytest.raises(ValueError, match="num_perm: 1 is not an integer >= 2"):
        CodeNovelty(num_perm=1)
    nov = CodeNovelty()
    nov.add("k", NET)
    with pytest.raises(ValueError, match="key 'k' is already in the archive"):
        nov.add("k", RESIDUAL)
    with pytest.raises(ValueError, match="source has no code tokens"):
        nov.score("# only a comment\n'''and a docstring'''\n")
    assert "k" in nov and len(nov) == 1


@needs_space
def test_seed_with_known_archives_every_known_architecture() -> None:
    nov = CodeNovelty()
    assert nov.seed_with_known() == len(space.KNOWN)
    assert nov.seed_with_known() == 0  # already there
    assert len(nov) == len(space.KNOWN)
    vgg = space.to_source(space.KNOWN["vgg"])
    assert nov.score(vgg) == 0.0
    assert nov.near_duplicates(vgg) == ["known:vgg"]
    renamed = re.sub(r"\bconv(\d)", r"layer\1", vgg).replace("x = ", "h = ")
    assert nov.is_near_duplicate(renamed)
    assert nov.score(RESIDUAL) > 0.3  # hand-written, unlike any of them


def numbers(values) -> str:
    """A source whose code tokens are exactly `values` (numbers stay; with shingle=1 each token
    is a shingle), so token sets of a known exact Jaccard are easy to write."""
    return " ".join(str(v) for v in values) + "\n"


def pairs_near_threshold(rng, count: int, size: int = 400) -> list[tuple[set, set, float]]:
    """(a, b, exact Jaccard) with the exact Jaccard spread over [0.85, 0.95]: b is a with `m`
    members swapped for new ones, J = (size - m) / (size + m). Each pair draws from its own
    range of numbers, so it shares nothing with the others."""
    out = []
    for i in range(count):
        j = rng.uniform(0.85, 0.95)
        m = round(size * (1 - j) / (1 + j))
        a = set(range(i * 2 * size, i * 2 * size + size))
        gone = set(rng.sample(sorted(a), m))
        b = (a - gone) | set(range(i * 2 * size + size, i * 2 * size + size + m))
        out.append((a, b, len(a & b) / len(a | b)))
    return out


def test_flag_is_the_estimate_reaching_the_threshold_near_it() -> None:
    import random

    from datasketch import MinHashLSH

    pairs = pairs_near_threshold(random.Random(3), 200)
    nov = CodeNovelty(shingle=1)
    old = MinHashLSH(threshold=0.90, num_perm=256)  # datasketch's own banding (9 x 28)
    for i, (a, _, _) in enumerate(pairs):
        nov.add(str(i), numbers(a))
        old.insert(str(i), nov.sketch(numbers(a)))
    old_index_missed = 0
    for i, (_, b, exact) in enumerate(pairs):
        sims = nov.similarities(numbers(b))
        estimate = max(sims.values())
        assert max(sims, key=sims.get) == str(i)  # the other pairs share no token
        flagged = nov.near_duplicates(numbers(b))
        assert bool(flagged) == (estimate >= 0.90), (exact, estimate)  # the estimate decides
        assert flagged in ([], [str(i)])
        assert bool(flagged) == (1.0 - nov.score(numbers(b)) >= 0.90)  # as the novelty says
        if abs(exact - 0.90) > 4 * math.sqrt(0.9 * 0.1 / 256):  # beyond the estimator's error
            assert bool(flagged) == (exact >= 0.90), (exact, estimate)
        old_index_missed += estimate >= 0.90 and not old.query(nov.sketch(numbers(b)))
    assert old_index_missed > 5  # the cases the LSH-only flag missed are among these


def test_banding_cannot_miss_a_member_at_the_threshold() -> None:
    """`d` differing MinHash values at the threshold, `d + 1` bands: one band stays whole."""
    for threshold, num_perm in ((0.90, 256), (0.99, 256), (1.0, 256), (0.5, 64), (0.3, 2)):
        nov = CodeNovelty(num_perm=num_perm, threshold=threshold)
        agree = math.ceil(threshold * num_perm - 1e-9)
        assert nov.bands >= num_perm - agree + 1 and nov.bands * nov.rows <= num_perm
    nov = CodeNovelty()
    assert (nov.bands, nov.rows) == (26, 9)  # 25 values may differ at J >= 0.90 of 256
