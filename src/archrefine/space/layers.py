"""What each token becomes in PyTorch, as data: constructor calls and functional expressions.

Torch-free on purpose: `to_source` renders these as code text (usable without torch, e.g. for
prompts), and `build` instantiates the very same calls, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from .check import Shape
from .vocab import SpaceSpec, Token

__all__ = ["Call", "FUNCTIONS", "layer_call", "layer_name", "projection_call"]

DROPOUT = 0.2

FUNCTIONS: dict[str, str] = {
    "relu": "F.relu(x)",
    "gelu": "F.gelu(x)",
    "silu": "F.silu(x)",
    "tanh": "torch.tanh(x)",
    "maxpool2": "F.max_pool2d(x, 2)",
    "avgpool2": "F.avg_pool2d(x, 2)",
    "gap": "x.mean(dim=(2, 3))",
    "flatten": "torch.flatten(x, 1)",
    "dropout": f"F.dropout(x, p={DROPOUT}, training=self.training)",
}
"""Parameter-free tokens as the expression of `x` they evaluate to (inside `Net.forward`)."""


@dataclass(frozen=True)
class Call:
    """A layer constructor call: `name(*args, **dict(kwargs))`, where `name` is `nn.X` or one
    of the helper classes in `archrefine.space.builder`; args may be nested calls."""

    name: str
    args: tuple[object, ...] = ()
    kwargs: tuple[tuple[str, object], ...] = ()

    def source(self) -> str:
        parts = [a.source() if isinstance(a, Call) else repr(a) for a in self.args]
        parts += [f"{k}={v!r}" for k, v in self.kwargs]
        return f"{self.name}({', '.join(parts)})"


def _conv(cin: int, cout: int, tok: Token, groups: int = 1) -> Call:
    kwargs: list[tuple[str, object]] = [("kernel_size", tok.kernel)]
    kwargs += [("stride", tok.stride)] if tok.stride != 1 else []
    kwargs += [("padding", tok.pad)] if tok.pad else []
    kwargs += [("groups", groups)] if groups != 1 else []
    return Call("nn.Conv2d", (cin, cout), tuple(kwargs))


def layer_call(tok: Token, shape: Shape, spec: SpaceSpec) -> Call | None:
    """The module `tok` needs on an input of `shape`; None for parameter-free tokens.

    Assumes the rank is right for `tok` (callers check it first): on a wrong rank the call
    would be meaningless, not merely fail.
    """
    c = shape.c
    if tok.kind == "conv":
        if tok.name == "dwconv3":
            return _conv(c, c, tok, groups=c)
        if tok.name.startswith("sepconv"):
            depthwise = _conv(c, c, tok, groups=c)
            pointwise = Call("nn.Conv2d", (c, tok.out), (("kernel_size", 1),))
            return Call("nn.Sequential", (depthwise, pointwise))
        return _conv(c, tok.out, tok)
    if tok.name == "batchnorm":
        return Call("nn.BatchNorm2d" if shape.spatial else "nn.BatchNorm1d", (c,))
    if tok.name == "layernorm":
        return Call("ChannelLayerNorm" if shape.spatial else "nn.LayerNorm", (c,))
    if tok.name == "groupnorm":
        return Call("nn.GroupNorm", (tok.divisor, c))
    if tok.kind == "se":
        return Call("SqueezeExcite", (c,))
    if tok.kind == "attn":
        return Call("SpatialSelfAttention", (c,), (("heads", tok.divisor),))
    if tok.kind == "linear":
        return Call("nn.Linear", (c, tok.out))
    if tok.kind == "head":
        return Call("nn.Linear", (c, spec.classes))
    return None


def projection_call(skip: Shape, out: Shape) -> Call | None:
    """The bias-free 1x1 conv (or linear map) matching a skip's width to the branch's."""
    if skip.c == out.c:
        return None
    name = "nn.Conv2d" if out.spatial else "nn.Linear"
    size = (("kernel_size", 1),) if out.spatial else ()
    return Call(name, (skip.c, out.c), (*size, ("bias", False)))


def layer_name(tok: Token, counts: dict[str, int]) -> str:
    """The attribute name of `tok`'s next layer: prefix + running count (conv1, conv2, proj1);
    the head, which ends every network, is just `head`. Updates `counts`."""
    if tok.kind == "head":
        return tok.prefix
    counts[tok.prefix] = counts.get(tok.prefix, 0) + 1
    return f"{tok.prefix}{counts[tok.prefix]}"
