"""Token sequences as real PyTorch modules. Imports torch: load it only through `build`.

The builder is the ground truth the fast checker is tested against, so it derives every shape
from the tensors PyTorch actually produces (a dummy batch runs through each layer as it is
added), never from the checker. Its own checks are only those PyTorch would fail to make or
would make confusingly: an op given a tensor of the wrong rank, and residual bookkeeping.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .check import InvalidArchitecture, Shape, as_tokens, explain
from .layers import DROPOUT, Call, layer_call, layer_name, projection_call
from .vocab import DEFAULT_SPEC, FLAT_KINDS, MAP_KINDS, TOKENS, SpaceSpec, Token

__all__ = [
    "ChannelLayerNorm",
    "Network",
    "SpatialSelfAttention",
    "SqueezeExcite",
    "build",
    "runs",
    "runs_many",
]


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (batch, channels, height, width) map, as in ConvNeXt."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


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


HELPERS = (ChannelLayerNorm, SqueezeExcite, SpatialSelfAttention)

_FUNCTIONS: dict[str, Callable[[torch.Tensor, bool], torch.Tensor]] = {
    "relu": lambda x, training: F.relu(x),
    "gelu": lambda x, training: F.gelu(x),
    "silu": lambda x, training: F.silu(x),
    "tanh": lambda x, training: torch.tanh(x),
    "maxpool2": lambda x, training: F.max_pool2d(x, 2),
    "avgpool2": lambda x, training: F.avg_pool2d(x, 2),
    "gap": lambda x, training: x.mean(dim=(2, 3)),
    "flatten": lambda x, training: torch.flatten(x, 1),
    "dropout": lambda x, training: F.dropout(x, p=DROPOUT, training=training),
}


class Network(nn.Module):
    """The network a token sequence describes: named layers, run along a flat plan of steps.

    Each step is ("layer", name), ("fn", token name), ("open", None) or ("close", projection
    name or None); the layer names and the order of operations are those of `to_source`.
    """

    def __init__(self, tokens: tuple[int, ...], spec: SpaceSpec) -> None:
        super().__init__()
        self.tokens = tokens
        self.spec = spec
        self.plan: list[tuple[str, str | None]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for op, arg in self.plan:
            if op == "layer":
                x = getattr(self, arg)(x)
            elif op == "fn":
                x = _FUNCTIONS[arg](x, self.training)
            elif op == "open":
                skips.append(x)
            else:
                skip = skips.pop()
                x = x + (skip if arg is None else getattr(self, arg)(skip))
        return x

    def extra_repr(self) -> str:
        return "tokens=" + " ".join(TOKENS[t].name for t in self.tokens if t)


def _instantiate(call: Call) -> nn.Module:
    args = [_instantiate(a) if isinstance(a, Call) else a for a in call.args]
    if call.name.startswith("nn."):
        cls = getattr(nn, call.name[3:])
    else:
        cls = {h.__name__: h for h in HELPERS}[call.name]
    return cls(*args, **dict(call.kwargs))


def _shape(x: torch.Tensor) -> Shape:
    return Shape(x.dim() == 4, int(x.shape[1]), int(x.shape[-1]) if x.dim() == 4 else 0)


class _Assembler:
    """Adds layers one by one, running a dummy input through each to learn the shape the next
    layer receives. Eval mode keeps batch-norm statistics untouched and makes a batch of one
    enough (no layer here depends on the batch size in eval mode)."""

    def __init__(self, tokens: np.ndarray, spec: SpaceSpec, device: str) -> None:
        self.net = Network(tuple(int(t) for t in tokens), spec)
        self.spec = spec
        self.x = torch.zeros(1, spec.channels, spec.size, spec.size, device=device)
        self.skips: list[tuple[torch.Tensor, int]] = []
        self.counts: dict[str, int] = {}

    def add(self, j: int, tok: Token) -> None:
        where, shape = f"position {j} ({tok.name})", _shape(self.x)
        if self.x.dim() != 4 and tok.kind in MAP_KINDS:
            raise InvalidArchitecture(
                f"{where}: needs a (batch, channels, height, width) input, got {shape}"
            )
        if self.x.dim() != 2 and tok.kind in FLAT_KINDS:
            raise InvalidArchitecture(f"{where}: needs a flat (batch, features) input, got {shape}")
        try:
            if tok.kind == "open":
                self.net.plan.append(("open", None))
                self.skips.append((self.x, j))
            elif tok.kind == "close":
                self._close(tok, where, shape)
            elif (call := layer_call(tok, shape, self.spec)) is not None:
                self._layer("layer", layer_name(tok, self.counts), call, self.x)
            elif tok.kind != "noop":
                self.net.plan.append(("fn", tok.name))
                self.x = _FUNCTIONS[tok.name](self.x, False)
        except InvalidArchitecture:
            raise
        except Exception as err:  # PyTorch's own verdict: window too large, groups, heads
            raise InvalidArchitecture(f"{where}: {type(err).__name__}: {err}") from err

    def _layer(self, op: str, name: str, call: Call, x: torch.Tensor) -> None:
        """Add layer `name`, run it on `x`: the new x, or (op "close") added to the old one."""
        module = _instantiate(call).eval()
        self.net.add_module(name, module)
        self.net.plan.append((op, name))
        self.x = module(x) if op == "layer" else self.x + module(x)

    def _close(self, tok: Token, where: str, shape: Shape) -> None:
        if not self.skips:
            raise InvalidArchitecture(f"{where}: no res_open to close")
        skip, opened = self.skips.pop()
        if skip.dim() != self.x.dim() or skip.shape[2:] != self.x.shape[2:]:
            raise InvalidArchitecture(
                f"{where}: the skip from position {opened} is {_shape(skip)} but the branch "
                f"gives {shape}; a residual must keep the spatial size and cannot span "
                "flatten or gap"
            )
        call = projection_call(_shape(skip), shape)
        if call is None:
            self.net.plan.append(("close", None))
            self.x = self.x + skip
        else:
            self._layer("close", layer_name(tok, self.counts), call, skip)

    def finish(self) -> Network:
        if self.skips:
            opened = self.skips[0][1]
            raise InvalidArchitecture(f"position {opened} (res_open): never closed by a res_close")
        return self.net.train()


def _assemble(tokens: np.ndarray, spec: SpaceSpec, device: str = "cpu") -> Network:
    assembler = _Assembler(tokens, spec, device)
    on_device = nullcontext() if device == "cpu" else torch.device(device)
    with torch.no_grad(), on_device:
        for j, t in enumerate(tokens):
            assembler.add(j, TOKENS[t])
            if TOKENS[t].kind == "head":
                break
    return assembler.finish()


def build(
    seq: object,
    spec: SpaceSpec = DEFAULT_SPEC,
    *,
    seed: int | None = None,
    check: bool = True,
) -> Network:
    """The PyTorch network `seq` describes, in training mode.

    Raises InvalidArchitecture (message: `explain(seq)`) for an invalid sequence. `seed`
    initialises the weights from `torch.manual_seed(seed)` without touching the global RNG;
    `check=False` skips the fast checker, leaving only PyTorch's and the builder's own
    checks (so tests can compare the two), and then builds networks whose output may have
    the wrong shape.
    """
    tokens = as_tokens(seq)
    if tokens.ndim != 1:
        raise ValueError(f"expected one sequence (a 1-d array), got shape {tokens.shape}")
    if check and (message := explain(tokens, spec)) is not None:
        raise InvalidArchitecture(message)
    rng = nullcontext() if seed is None else torch.random.fork_rng(devices=[])
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        return _assemble(tokens, spec)


def runs(
    seq: object, spec: SpaceSpec = DEFAULT_SPEC, *, batch: int = 2, device: str = "cpu"
) -> bool:
    """Ground truth for `is_valid`, without consulting it: does `build(seq, check=False)`
    succeed and map a dummy (batch, channels, size, size) input to (batch, classes)?

    `device="meta"` asks PyTorch's shape functions only (no weights, no arithmetic): the same
    verdicts without the memory, for specs whose networks would be too large to run.
    """
    tokens = as_tokens(seq)
    try:
        net = _assemble(tokens, spec, device).eval()
    except InvalidArchitecture:
        return False
    with torch.no_grad():
        out = net(torch.zeros(batch, spec.channels, spec.size, spec.size, device=device))
    return tuple(out.shape) == (batch, spec.classes)


def runs_many(seqs: np.ndarray, spec: SpaceSpec = DEFAULT_SPEC, *, batch: int = 2) -> np.ndarray:
    """`runs` for each row of `seqs` (n, length), one thread: a picklable unit of work for
    process pools."""
    torch.set_num_threads(1)
    return np.array([runs(s, spec, batch=batch) for s in np.asarray(seqs)], dtype=bool)
