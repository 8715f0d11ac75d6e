"""KNOWN: classic architectures, distinct, valid, cited, and trainable networks."""

from __future__ import annotations

import numpy as np
import pytest

from archrefine.space import (
    KNOWN,
    KNOWN_ARRAY,
    KNOWN_CITATIONS,
    LENGTH,
    VOCAB,
    canonical,
    is_valid,
    trace,
)

CLASSICS = [
    "lenet5", "alexnet", "vgg", "nin", "allconv", "resnet", "preact_resnet", "mobilenet",
    "squeezenet", "senet", "vit",
]  # fmt: skip


def test_at_least_sixteen_including_the_classics():
    assert len(KNOWN) >= 16
    assert set(CLASSICS) <= set(KNOWN)


def test_every_entry_is_fifteen_valid_token_ids():
    for name, s in KNOWN.items():
        assert isinstance(s, tuple) and len(s) == LENGTH, name
        assert all(isinstance(t, int) and 0 <= t < len(VOCAB) for t in s), name
    assert is_valid(KNOWN_ARRAY).all()


def test_entries_are_distinct_even_in_canonical_form():
    assert len({canonical(s) for s in KNOWN.values()}) == len(KNOWN)


def test_every_entry_has_a_one_line_citation_with_a_year():
    assert KNOWN_CITATIONS.keys() == KNOWN.keys()
    for name, cite in KNOWN_CITATIONS.items():
        assert "\n" not in cite and len(cite) > 20, name
        assert any(f"({y})" in cite for y in range(1980, 2030)), name


def test_known_array_stacks_known_read_only():
    assert KNOWN_ARRAY.shape == (len(KNOWN), LENGTH)
    assert np.issubdtype(KNOWN_ARRAY.dtype, np.integer)
    assert [tuple(r) for r in KNOWN_ARRAY.tolist()] == list(KNOWN.values())
    with pytest.raises(ValueError):
        KNOWN_ARRAY[0, 0] = 1


def test_signatures_survive_the_encoding():
    """Spot checks that the encodings are what their names claim."""
    lenet = trace(KNOWN["lenet5"])
    assert any(s.c == 400 and not s.spatial for s in lenet)  # 16 x 5 x 5 into the classifier
    assert VOCAB.index("res_open") in KNOWN["resnet"] and VOCAB.index("se") in KNOWN["senet"]
    assert VOCAB.index("attn") in KNOWN["vit"] and VOCAB.index("patch4_64") in KNOWN["vit"]
    assert VOCAB.index("dwconv3") in KNOWN["mobilenet"]
    assert VOCAB.index("maxpool2") not in KNOWN["allconv"]


@pytest.mark.torch
@pytest.mark.parametrize("name", list(KNOWN))
def test_known_builds_runs_and_trains(name):
    torch = pytest.importorskip("torch")
    from archrefine.space import build

    net = build(KNOWN[name], seed=0)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = net(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in net.parameters())
