"""The vocabulary, the spec, canonical forms, and the promise that only `build` needs torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from archrefine.space import (
    LENGTH,
    TOKENS,
    VOCAB,
    SpaceSpec,
    canonical,
    token_id,
)


def test_vocabulary_has_thirty_distinct_tokens_and_fifteen_positions():
    assert len(VOCAB) == 30 and len(set(VOCAB)) == 30
    assert LENGTH == 15
    assert [t.name for t in TOKENS] == list(VOCAB)


def test_token_zero_is_the_only_noop():
    assert VOCAB[0] == "none"
    assert [t.kind for t in TOKENS].count("noop") == 1


def test_vocabulary_covers_the_component_families():
    kinds = {t.kind for t in TOKENS}
    assert kinds >= {"conv", "pool", "gap", "norm", "act", "dropout", "open", "close", "se"}
    assert kinds >= {"attn", "flatten", "linear", "head", "noop"}
    assert {"dwconv3", "sepconv3_64", "batchnorm", "layernorm", "groupnorm"} <= set(VOCAB)
    assert len({(t.kernel, t.stride) for t in TOKENS if t.kind == "conv"}) >= 4


def test_token_id_inverts_vocab_and_names_unknown_tokens():
    assert all(token_id(name) == i for i, name in enumerate(VOCAB))
    with pytest.raises(ValueError, match="'conv7'"):
        token_id("conv7")


def test_canonical_drops_noops_and_everything_after_the_head():
    c, head, relu = token_id("conv3_16"), token_id("head"), token_id("relu")
    assert canonical([0, c, 0, relu, 0]) == (c, relu)
    assert canonical([c, head, relu, head]) == (c, head)
    assert canonical([0] * LENGTH) == ()
    assert canonical((c, relu)) == canonical([0, c, 0, 0, relu])


@pytest.mark.parametrize("field", ["channels", "size", "classes"])
@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_spec_rejects_non_positive_ints_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"SpaceSpec.{field}"):
        SpaceSpec(**{field: value})


def test_spec_is_frozen_with_cifar_defaults():
    spec = SpaceSpec()
    assert (spec.channels, spec.size, spec.classes) == (3, 32, 10)
    with pytest.raises(AttributeError):
        spec.size = 28  # type: ignore[misc]


def test_space_works_without_torch():
    """The core install has no torch: everything but `build` must still work."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        import archrefine.space as s
        assert len(s.VOCAB) == 30 and len(s.KNOWN) >= 16
        assert s.is_valid(s.KNOWN_ARRAY).all()
        assert s.explain(s.KNOWN["vgg"]) is None
        assert "class Net(nn.Module)" in s.to_source(s.KNOWN["resnet"])
        try:
            s.build(s.KNOWN["vgg"])
        except ImportError:
            print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
