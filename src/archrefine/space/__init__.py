"""The grounded architecture space: every 15-token sequence is a real PyTorch network.
Layer: may import core only (torch only inside `build`); sim, code, sandbox and real build on it.

Thirty component types (convolutions, pooling, normalisation, activations, residual skips,
squeeze-and-excitation, attention, linear layers, a classifier head, a no-op) describe image
classifiers. `is_valid` decides in numpy, for millions of sequences a second, exactly which
sequences build and run; `build` and `to_source` turn them into modules or code. Only `build`
needs torch, and imports it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .check import InvalidArchitecture, Shape, explain, is_valid, trace
from .known import KNOWN, KNOWN_ARRAY, KNOWN_CITATIONS
from .source import to_source
from .vocab import DEFAULT_SPEC, LENGTH, TOKENS, VOCAB, SpaceSpec, Token, canonical, token_id

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_SPEC",
    "KNOWN",
    "KNOWN_ARRAY",
    "KNOWN_CITATIONS",
    "LENGTH",
    "TOKENS",
    "VOCAB",
    "InvalidArchitecture",
    "Shape",
    "SpaceSpec",
    "Token",
    "build",
    "canonical",
    "explain",
    "is_valid",
    "to_source",
    "token_id",
    "trace",
]


def build(
    seq: object, spec: SpaceSpec = DEFAULT_SPEC, *, seed: int | None = None, check: bool = True
) -> torch.nn.Module:
    """The `torch.nn.Module` (training mode) that `seq` describes; needs torch, imported here.

    Raises InvalidArchitecture, with `explain(seq)` as its message, for an invalid `seq`.
    `seed` fixes the initial weights (global RNG untouched); `check=False` skips the fast
    checker and leaves the verdict to PyTorch (see `archrefine.space.builder.build`).
    """
    from .builder import build as _build

    return _build(seq, spec, seed=seed, check=check)
