"""Token sequences as standalone PyTorch source: the `class Net(nn.Module)` an LLM would write.

Pure string work (no torch), from the checker's shape trace and the same layer calls `build`
instantiates, so `exec(to_source(seq))` defines a `Net` equal to `build(seq)`: same layer
names, parameter shapes, initialisation order and forward computation.
"""

from __future__ import annotations

import textwrap

from .check import Shape, trace
from .layers import FUNCTIONS, Call, layer_call, layer_name, projection_call
from .vocab import DEFAULT_SPEC, TOKENS, VOCAB, SpaceSpec, canonical

__all__ = ["to_source"]

# Verbatim copies of the helper classes in builder.py (a test keeps them identical).
HELPER_SOURCE: dict[str, str] = {
    "ChannelLayerNorm": '''\
class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (batch, channels, height, width) map, as in ConvNeXt."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
''',
    "SqueezeExcite": '''\
class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: gate each channel by a function of all channels' means."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.reduce = nn.Conv2d(channels, hidden, kernel_size=1)
        self.expand = nn.Conv2d(hidden, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(s))))
''',
    "SpatialSelfAttention": '''\
class SpatialSelfAttention(nn.Module):
    """Multi-head self-attention among the height * width positions of a feature map."""

    def __init__(self, channels: int, heads: int = 4) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels cannot be split into {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(x.flatten(2).transpose(1, 2))  # (b, h * w, 3 * c)
        q, k, v = qkv.view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, heads, h * w, c // heads)
        out = self.proj(out.transpose(1, 2).reshape(b, h * w, c))
        return out.transpose(1, 2).reshape(b, c, h, w)
''',
}


def to_source(seq: object, spec: SpaceSpec = DEFAULT_SPEC) -> str:
    """Readable standalone PyTorch code defining `class Net(nn.Module)` for a valid `seq`.

    Raises InvalidArchitecture for an invalid one. Lines that change the tensor's shape carry
    the new shape as a comment; the code is formatted as `ruff format` would.
    """
    shapes = trace(seq, spec)
    tokens = canonical(seq)
    init, forward = _body(seq, shapes, spec)
    helpers = [h for h in HELPER_SOURCE if any(f"{h}(" in line for line in init)]
    code = "\n".join(init + forward + [HELPER_SOURCE[h] for h in helpers])
    summary = textwrap.wrap(" ".join(VOCAB[t] for t in tokens), width=92) or ["(empty)"]
    lines = [f'"""{summary[0]}', *summary[1:], ""]
    lines += [
        f"Input (batch, {spec.channels}, {spec.size}, {spec.size}) -> logits "
        f"(batch, {spec.classes}). Written by archrefine.space.to_source.",
        '"""',
        "",
        "import torch",
        *(["import torch.nn.functional as F"] if "F." in code else []),
        "from torch import nn",
        "",
    ]
    for helper in helpers:
        lines += ["", HELPER_SOURCE[helper]]
    lines += ["", "class Net(nn.Module):", "    def __init__(self) -> None:"]
    lines += ["        super().__init__()"] + [f"        {line}" for line in init]
    lines += ["", "    def forward(self, x: torch.Tensor) -> torch.Tensor:"]
    lines += [f"        {line}" for line in forward] + ["        return x", ""]
    return "\n".join(lines)


def _body(seq: object, shapes: list[Shape], spec: SpaceSpec) -> tuple[list[str], list[str]]:
    """The lines of `Net.__init__` (after super) and `Net.forward` (before return)."""
    init: list[str] = []
    forward: list[str] = [f"# x: {shapes[0]}"]
    counts: dict[str, int] = {}
    skips: list[tuple[str, int]] = []  # open residuals: variable, position
    opened = 0
    for j, t in enumerate(int(t) for t in seq):
        tok, shape, after = TOKENS[t], shapes[j], shapes[j + 1]
        note = f"  # {after}" if after != shape else ""
        if tok.kind == "open":
            opened += 1
            skips.append((f"skip{opened}", j))
            forward.append(f"skip{opened} = x  # residual from here")
        elif tok.kind == "close":
            skip, start = skips.pop()
            call = projection_call(shapes[start], shape)
            if call is None:
                forward.append(f"x = x + {skip}{note}")
            else:
                name = layer_name(tok, counts)
                init += _assign(name, call)
                forward.append(f"x = x + self.{name}({skip}){note}")
        elif (call := layer_call(tok, shape, spec)) is not None:
            name = layer_name(tok, counts)
            init += _assign(name, call)
            forward.append(f"x = self.{name}(x){note}")
        elif tok.kind != "noop":
            forward.append(f"x = {FUNCTIONS[tok.name]}{note}")
        if tok.kind == "head":
            break
    return init, forward


def _assign(name: str, call: Call) -> list[str]:
    """`self.name = call(...)`, one argument per line when it would pass 100 columns."""
    line = f"self.{name} = {call.source()}"
    if len(line) <= 100 - 8 or not call.args:
        return [line]
    args = [a.source() if isinstance(a, Call) else repr(a) for a in call.args]
    args += [f"{k}={v!r}" for k, v in call.kwargs]
    return [f"self.{name} = {call.name}(", *(f"    {a}," for a in args), ")"]
