"""`build` and `to_source`: real networks, the same network twice, and honest failures."""

from __future__ import annotations

import inspect
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archrefine.space import (
    KNOWN,
    KNOWN_ARRAY,
    LENGTH,
    TOKENS,
    VOCAB,
    InvalidArchitecture,
    Shape,
    SpaceSpec,
    build,
    explain,
    is_valid,
    to_source,
    token_id,
)

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from archrefine.space import builder  # noqa: E402  (needs torch)
from archrefine.space.layers import FUNCTIONS, layer_call  # noqa: E402
from archrefine.space.source import HELPER_SOURCE  # noqa: E402
from archrefine.space.vocab import FLAT_KINDS, MAP_KINDS  # noqa: E402


def seq(words: str) -> list[int]:
    ids = [token_id(w) for w in words.split()]
    return ids + [0] * (LENGTH - len(ids))


def exec_net(source: str) -> type:
    namespace: dict = {}
    exec(compile(source, "<to_source>", "exec"), namespace)  # our own generated code
    return namespace["Net"]


def _valid_pool(n: int, seed: int = 0) -> np.ndarray:
    """Valid sequences from uniform random draws and KNOWN mutants."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, len(VOCAB), (300_000, LENGTH))
    mutants = KNOWN_ARRAY[rng.integers(0, len(KNOWN), 20_000)].copy()
    rows = np.arange(len(mutants))
    mutants[rows, rng.integers(0, LENGTH, len(mutants))] = rng.integers(0, 30, len(mutants))
    both = np.concatenate([pool[is_valid(pool)][: n // 2], mutants[is_valid(mutants)]])
    return both[:n]


VALID = _valid_pool(400)


def assert_same_network(s, spec: SpaceSpec = SpaceSpec()) -> None:
    """exec(to_source(s)) and build(s): same layers, same init from one seed, same outputs."""
    Net = exec_net(to_source(s, spec))
    torch.manual_seed(7)
    theirs = Net()
    ours = build(s, spec, seed=7)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a), "same seed, different initial weights"
    x = torch.randn(
        3, spec.channels, spec.size, spec.size, generator=torch.Generator().manual_seed(0)
    )
    for train in (False, True):
        ours.train(train)
        theirs.train(train)
        torch.manual_seed(1)  # dropout masks
        y = ours(x)
        torch.manual_seed(1)
        assert torch.equal(y, theirs(x))
        assert y.shape == (3, spec.classes)


@pytest.mark.parametrize("name", list(KNOWN))
def test_source_defines_the_network_build_returns_for_known(name):
    assert_same_network(KNOWN[name])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(list(range(len(VALID)))))
def test_source_defines_the_network_build_returns(i):
    assert_same_network(VALID[i])


def test_source_matches_build_on_another_spec():
    spec = SpaceSpec(channels=1, size=28, classes=16)
    assert_same_network(KNOWN["lenet5"], spec)
    assert_same_network(seq("conv3_16 res_open conv3_32 res_close gap head groupnorm"), spec)


def test_copied_weights_give_equal_outputs():
    Net = exec_net(to_source(KNOWN["senet"]))
    theirs = Net().eval()
    ours = build(KNOWN["senet"]).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(ours(x), theirs(x))


def test_helper_classes_in_source_are_those_build_uses():
    for cls in builder.HELPERS:
        assert HELPER_SOURCE[cls.__name__] == inspect.getsource(cls)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_function_expressions_in_source_are_those_build_runs(name):
    x = torch.randn(2, 8, 4, 4)
    for training in (False, True):
        scope = {"F": torch.nn.functional, "torch": torch, "x": x}
        scope["self"] = torch.nn.Module().train(training)
        torch.manual_seed(0)
        expected = builder._FUNCTIONS[name](x, training)
        torch.manual_seed(0)
        assert torch.equal(eval(FUNCTIONS[name], scope), expected)  # our own expression


def test_source_is_readable_code():
    text = to_source(KNOWN["resnet"])
    assert "class Net(nn.Module):" in text and "def forward(self, x" in text
    assert "self.proj" not in text  # 32 -> 32 channels: an identity skip
    assert "x = x + skip1" in text
    assert "# (batch, 10)" in text
    projected = to_source(seq("res_open conv3_16 res_close gap head"))
    assert "nn.Conv2d(3, 16, kernel_size=1, bias=False)" in projected
    assert "ChannelLayerNorm" not in text and "ChannelLayerNorm" in to_source(KNOWN["vit"])


@pytest.mark.skipif(shutil.which("ruff") is None, reason="needs the ruff executable")
def test_source_is_lint_clean_and_formatted(tmp_path):
    for i, s in enumerate([*KNOWN.values(), *VALID[:40]]):
        (tmp_path / f"net{i}.py").write_text(to_source(s))
    common = ["--isolated", "--line-length", "100"]
    fmt = subprocess.run(["ruff", "format", "--check", *common, str(tmp_path)], capture_output=True)
    assert fmt.returncode == 0, fmt.stdout.decode()
    lint = ["ruff", "check", *common, "--select", "E,F,W,I,UP,B", str(tmp_path)]
    done = subprocess.run(lint, capture_output=True)
    assert done.returncode == 0, done.stdout.decode()


def test_build_returns_a_training_mode_module_with_untouched_statistics():
    net = build(KNOWN["resnet"], seed=0)
    assert isinstance(net, torch.nn.Module) and net.training
    bn = net.bn1
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert int(bn.num_batches_tracked) == 0
    assert "res_open" in repr(net)


def test_seed_fixes_weights_without_touching_global_rng():
    state = torch.get_rng_state()
    a, b = build(KNOWN["vit"], seed=3), build(KNOWN["vit"], seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    c = build(KNOWN["vit"], seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters(), strict=True))


def test_any_batch_size_works():
    net = build(KNOWN["mobilenet"]).eval()
    for batch in (1, 5):
        assert net(torch.zeros(batch, 3, 32, 32)).shape == (batch, 10)


@pytest.mark.parametrize(
    "words",
    ["head", "attn gap head", "conv3_16 res_close gap head", "conv3_16 relu", "gap se head"],
)
def test_invalid_sequences_raise_with_the_explain_message(words):
    with pytest.raises(InvalidArchitecture) as info:
        build(seq(words))
    assert str(info.value) == explain(seq(words))
    with pytest.raises(InvalidArchitecture):
        to_source(seq(words))


@pytest.mark.parametrize(
    ("words", "pytorch_says"),
    [
        ("patch4_64 patch4_64 maxpool2 maxpool2 gap head", "Output size is too small"),
        ("patch4_64 patch4_64 conv5v_16 gap head", "Kernel size can't be greater"),
        ("groupnorm gap head", "divisible"),
        ("attn gap head", "cannot be split into 4 heads"),
    ],
)
def test_without_the_checker_pytorch_itself_refuses(words, pytorch_says):
    """The size and divisibility rules are PyTorch's, not the checker's inventions."""
    with pytest.raises(InvalidArchitecture, match=pytorch_says):
        build(seq(words), check=False)


@pytest.mark.parametrize("tok", [t for t in TOKENS if t.kind in MAP_KINDS | FLAT_KINDS])
@pytest.mark.parametrize("width", [8, 16])
def test_rank_rules_are_pytorchs_own(tok, width):
    """On the wrong rank the plain layer raises, or silently computes a tensor of another rank
    (nn.Linear on a map acts on its last axis): `build` refusing first loses nothing."""
    if tok.kind in MAP_KINDS:
        x, meant, rank = torch.zeros(2, width), Shape(True, width, 1), 4
    else:
        x, meant, rank = torch.zeros(2, width, 8, 8), Shape(False, width, 0), 2
    call = layer_call(tok, meant, SpaceSpec())
    try:
        y = builder._instantiate(call)(x) if call else builder._FUNCTIONS[tok.name](x, False)
    except Exception:
        return
    assert y.dim() != rank, tok.name


def test_without_the_checker_a_wrong_output_shape_builds_but_does_not_run_right():
    net = build(seq("conv3_16 relu"), check=False)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 16, 32, 32)
    assert not builder.runs(seq("conv3_16 relu"))
    assert builder.runs(KNOWN["vgg"]) and builder.runs(KNOWN["vgg"], batch=1)


def test_meta_device_gives_the_same_verdicts():
    rng = np.random.default_rng(5)
    seqs = np.concatenate([VALID[:10], rng.integers(0, 30, (15, LENGTH))])
    cpu = [builder.runs(s) for s in seqs]
    assert cpu == [builder.runs(s, device="meta") for s in seqs]
    assert cpu == is_valid(seqs).tolist()
