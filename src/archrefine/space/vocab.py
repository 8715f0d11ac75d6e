"""The 30 component types of the grounded space and the input/output spec they act on.

Pure data: no torch, no numpy. The batched checker, the PyTorch builder and the source writer
all read their per-token facts (kind, width, window, divisor) from `TOKENS`; what each kind
becomes in PyTorch lives in `layers.py`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "FLAT_KINDS",
    "LENGTH",
    "MAP_KINDS",
    "TOKENS",
    "VOCAB",
    "SpaceSpec",
    "DEFAULT_SPEC",
    "Token",
    "canonical",
    "token_id",
]

LENGTH = 15
"""Positions per sequence; shorter networks are padded with the no-op token 0."""


@dataclass(frozen=True)
class SpaceSpec:
    """The classification task a sequence is built for: input (channels, size, size), classes."""

    channels: int = 3
    size: int = 32
    classes: int = 10

    def __post_init__(self) -> None:
        for field in ("channels", "size", "classes"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SpaceSpec.{field}: {value!r} is not a positive int")


DEFAULT_SPEC = SpaceSpec()


@dataclass(frozen=True)
class Token:
    """One component type.

    `kind` selects the rule family; `out` is the channel/feature count it produces (-1: keeps
    its input's, -2: the spec's `classes`); `kernel`/`stride`/`pad` give the window of
    spatial ops (output side (s + 2*pad - kernel) // stride + 1, illegal when below 1);
    `divisor` is a channel count the input must be divisible by; `prefix` names its layer in
    the generated `Net` (empty when the op is a parameter-free function call).
    """

    name: str
    kind: str
    doc: str
    out: int = -1
    kernel: int = 1
    stride: int = 1
    pad: int = 0
    divisor: int = 1
    prefix: str = ""


# Kinds: noop, conv (spatial, may change channels), pool (spatial window, keeps channels),
# gap, norm, act, dropout, open, close, se, attn, flatten, linear, head.
TOKENS: tuple[Token, ...] = (
    Token("none", "noop", "no-op padding; removed by canonical()"),
    Token("conv3_16", "conv", "3x3 conv, padding 1, to 16 channels", 16, 3, 1, 1, prefix="conv"),
    Token("conv3_32", "conv", "3x3 conv, padding 1, to 32 channels", 32, 3, 1, 1, prefix="conv"),
    Token("conv3_64", "conv", "3x3 conv, padding 1, to 64 channels", 64, 3, 1, 1, prefix="conv"),
    Token("conv1_16", "conv", "1x1 conv to 16 channels (squeeze, bottleneck)", 16, prefix="conv"),
    Token("conv1_64", "conv", "1x1 conv to 64 channels (expand, NiN, MLP)", 64, prefix="conv"),
    Token("conv5v_16", "conv", "5x5 conv, no padding, to 16 (LeNet)", 16, 5, prefix="conv"),
    Token("conv3s2_64", "conv", "3x3 conv, stride 2, padding 1, to 64", 64, 3, 2, 1, prefix="conv"),
    Token("patch4_64", "conv", "4x4 conv, stride 4, to 64 (patchify)", 64, 4, 4, prefix="conv"),
    Token("dwconv3", "conv", "depthwise 3x3 conv, padding 1", -1, 3, 1, 1, prefix="dwconv"),
    Token("sepconv3_64", "conv", "depthwise 3x3 then 1x1 to 64", 64, 3, 1, 1, prefix="sepconv"),
    Token("maxpool2", "pool", "2x2 max pooling, stride 2", -1, 2, 2),
    Token("avgpool2", "pool", "2x2 average pooling, stride 2", -1, 2, 2),
    Token("gap", "gap", "global average pooling to a flat (batch, channels) tensor"),
    Token("batchnorm", "norm", "batch norm (2d on feature maps, 1d on flat)", prefix="bn"),
    Token("layernorm", "norm", "layer norm over channels (per position) or features", prefix="ln"),
    Token("groupnorm", "norm", "group norm with 8 groups", divisor=8, prefix="gn"),
    Token("relu", "act", "ReLU"),
    Token("gelu", "act", "GELU"),
    Token("silu", "act", "SiLU (swish)"),
    Token("tanh", "act", "tanh"),
    Token("dropout", "dropout", "dropout, p = 0.2"),
    Token("res_open", "open", "start a residual branch: remember the current tensor"),
    Token(
        "res_close", "close", "add the remembered tensor, projected if widths differ", prefix="proj"
    ),
    Token("se", "se", "squeeze-and-excitation channel gate, reduction 4", prefix="se"),
    Token("attn", "attn", "4-head self-attention among positions", divisor=4, prefix="attn"),
    Token("flatten", "flatten", "(batch, C, H, W) to (batch, C*H*W); no-op when flat"),
    Token("linear_64", "linear", "linear layer to 64 features", 64, prefix="fc"),
    Token("linear_128", "linear", "linear layer to 128 features", 128, prefix="fc"),
    Token("head", "head", "linear classifier to the classes; ends the network", -2, prefix="head"),
)

MAP_KINDS = frozenset({"conv", "pool", "gap", "se", "attn"})
"""Kinds that need a (batch, channels, height, width) input."""
FLAT_KINDS = frozenset({"linear", "head"})
"""Kinds that need a flat (batch, features) input."""

VOCAB: tuple[str, ...] = tuple(t.name for t in TOKENS)
"""Token names, indexed by token id (0..29)."""

_IDS = {name: i for i, name in enumerate(VOCAB)}
assert len(VOCAB) == 30 and len(_IDS) == 30


def token_id(name: str) -> int:
    """The id of the token called `name` (ValueError if there is none)."""
    try:
        return _IDS[name]
    except KeyError:
        raise ValueError(f"{name!r} is not a token of archrefine.space.VOCAB") from None


def canonical(seq: Iterable[int]) -> tuple[int, ...]:
    """The tokens that reach the network: no-ops removed, and nothing after the first head
    (the head ends the network). Sequences with equal canonical forms build the same network,
    so distances and de-duplication should use this form."""
    out: list[int] = []
    for t in seq:
        if int(t):
            out.append(int(t))
            if TOKENS[int(t)].kind == "head":
                break
    return tuple(out)
