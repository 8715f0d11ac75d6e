"""Train one grounded network on the digits: the data, the settings, one seeded run.

What an accuracy depends on (`TrainSettings`), the bundled digits at the spec's input
(`digits`), and `train_one`, deterministic in the run seed and the canonical architecture.
`training.py` runs many of these in worker processes, with a cache; see its docstring for why
these networks need no sandbox.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from archrefine.space import DEFAULT_SPEC, LENGTH, TOKENS, SpaceSpec, trace

if TYPE_CHECKING:
    import torch

__all__ = [
    "DIGIT_CLASSES",
    "HELD_OUT",
    "TrainSettings",
    "cost",
    "digits",
    "train_one",
    "weight_seed",
]

HELD_OUT = 0.25
"""Fraction of the digits held out (stratified) to score accuracy: 450 of 1,797 images."""
DIGIT_CLASSES = 10
Tokens = tuple[int, ...]
Data = tuple["torch.Tensor", "torch.Tensor", "torch.Tensor", "torch.Tensor"]


@dataclass(frozen=True)
class TrainSettings:
    """Everything an accuracy depends on besides the architecture; picklable for workers."""

    spec: SpaceSpec = DEFAULT_SPEC
    seed: int = 0
    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    max_train: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.spec, SpaceSpec):
            raise ValueError(f"spec: {self.spec!r} is not a SpaceSpec")
        if self.spec.classes < DIGIT_CLASSES:
            raise ValueError(f"spec.classes: {self.spec.classes} < the {DIGIT_CLASSES} digits")
        for name, low in (("epochs", 1), ("batch_size", 2)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name}: {value!r} is not an integer >= {low}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed: {self.seed!r} is not an integer")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr: {self.lr!r} is not a positive number")
        if self.max_train is not None and (
            not isinstance(self.max_train, int) or self.max_train < DIGIT_CLASSES
        ):
            raise ValueError(f"max_train: {self.max_train!r} is not None or an integer >= 10")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def digits(settings: TrainSettings) -> Data:
    """(x_train, y_train, x_held_out, y_held_out): the digits resized to the spec's input
    (bilinear, channels repeated), standardised with the training images' mean and std."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    state = settings.seed % 2**32
    index = np.arange(len(y))
    train, held = train_test_split(index, test_size=HELD_OUT, stratify=y, random_state=state)
    if settings.max_train is not None and settings.max_train < len(train):
        train, _ = train_test_split(
            train, train_size=settings.max_train, stratify=y[train], random_state=state
        )
    spec = settings.spec
    images = torch.tensor(x / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    images = F.interpolate(images, size=(spec.size, spec.size), mode="bilinear")
    images = images.expand(-1, spec.channels, -1, -1).contiguous()
    labels = torch.tensor(y, dtype=torch.int64)
    mean, std = images[train].mean(), images[train].std()
    images = (images - mean) / std
    return images[train], labels[train], images[held], labels[held]


def weight_seed(seed: int, tokens: Tokens) -> int:
    """A 63-bit seed from the run seed and the canonical architecture (not from call order)."""
    text = f"{seed}:{' '.join(map(str, tokens))}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def train_one(tokens: Tokens, settings: TrainSettings, data: Data) -> float:
    """Held-out accuracy of the canonical architecture `tokens` after `settings.epochs` epochs
    of Adam; runs on the caller's torch threads, leaves the global RNG as it found it."""
    import torch
    import torch.nn.functional as F

    from archrefine.space import build

    x, y, x_held, y_held = data
    seq = np.zeros(LENGTH, dtype=np.int64)
    seq[: len(tokens)] = tokens
    wseed = weight_seed(settings.seed, tokens)
    order_rng = torch.Generator().manual_seed(settings.seed % 2**63)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(wseed)  # dropout masks
        net = build(seq, settings.spec, seed=wseed)
        opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
        for _ in range(settings.epochs):
            order = torch.randperm(len(y), generator=order_rng)
            for start in range(0, len(y), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                if len(batch) < 2:  # batch norm on flat features needs two samples
                    continue
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(x[batch]), y[batch]).backward()
                opt.step()
        net.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(y_held), 256):
                logits = net(x_held[start : start + 256])
                correct += int((logits.argmax(1) == y_held[start : start + 256]).sum())
    return correct / len(y_held)


def cost(tokens: Tokens, spec: SpaceSpec = DEFAULT_SPEC) -> float:
    """Rough multiply-adds of one forward pass, from the checker's shapes: only to start the
    most expensive networks first, so one slow network does not finish alone at the end."""
    shapes = trace(tokens, spec)
    total = 0.0
    for t, a, b in zip(tokens, shapes, shapes[1:], strict=False):
        tok = TOKENS[t]
        area_in, area_out = max(a.s, 1) ** 2, max(b.s, 1) ** 2
        if tok.kind == "conv":
            fan_in = 1 if tok.name == "dwconv3" else a.c
            total += area_out * b.c * fan_in * tok.kernel**2
        elif tok.kind in ("linear", "head"):
            total += a.c * b.c
        elif tok.kind == "attn":
            total += area_in**2 * a.c + 4 * area_in * a.c**2
        else:
            total += area_in * a.c
    return total
