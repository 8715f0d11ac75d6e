"""Mapping a code `Fingerprint` into the grounded vocabulary (`archrefine.space.VOCAB`), so
code candidates and simulated ones share one novelty/diversity yardstick."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from archrefine.code.fingerprint import Fingerprint

__all__ = ["TOKEN_OF", "to_tokens"]


TOKEN_OF: dict[str, str] = {
    "BatchNorm": "batchnorm", "LayerNorm": "layernorm", "GroupNorm": "groupnorm",
    "InstanceNorm": "groupnorm", "ReLU": "relu", "ReLU6": "relu", "LeakyReLU": "relu",
    "ELU": "relu", "GELU": "gelu", "SiLU": "silu", "Hardswish": "silu", "Mish": "silu",
    "Tanh": "tanh", "MaxPool2d": "maxpool2", "AvgPool2d": "avgpool2", "GlobalAvgPool": "gap",
    "GlobalMaxPool": "gap", "Flatten": "flatten", "Dropout": "dropout", "Save": "res_open",
    "Add": "res_close", "Proj": "", "SE": "se", "Attention": "attn",
}  # fmt: skip
"""Fingerprint op → closest VOCAB token ("" = absorbed, e.g. a skip's projection). Conv2d and
Linear are mapped by `_token` from their parameters; anything else has no counterpart."""
_OP = re.compile(r"^(\w+)(?:\((.*)\))?$")


def to_tokens(fp: Fingerprint) -> list[int] | None:
    """The grounded-space sequence (canonical form: no padding, ends at the head) closest to
    `fp.forward`, or None when an op has no counterpart or it needs more than `LENGTH` tokens.
    The last Linear becomes the head; a depthwise conv followed directly by a 1x1 conv to 64
    becomes `sepconv3_64`. Needs `archrefine.space`."""
    from archrefine.space import LENGTH, token_id

    ops = list(fp.forward)
    while ops and ops[-1] in ("Softmax", "LogSoftmax"):  # output normalisation, not structure
        ops.pop()
    last_linear = max((i for i, op in enumerate(ops) if op.startswith("Linear(")), default=-1)
    names: list[str] = []
    for i, op in enumerate(ops):
        name = "head" if i == last_linear else _token(op)
        if name is None:
            return None
        if name == "conv1_64" and names and names[-1] == "dwconv3":
            names[-1] = "sepconv3_64"
        elif name:
            names.append(name)
        if name == "head":
            break
    if not names or len(names) > LENGTH:
        return None
    return [token_id(n) for n in names]


def _token(op: str) -> str | None:
    match = _OP.match(op)
    if match is None:
        return None
    name, inside = match.group(1), (match.group(2) or "").split(",")
    params = dict(p.split("=", 1) for p in inside if "=" in p)
    if name in TOKEN_OF:
        return TOKEN_OF[name]
    if name not in ("Conv2d", "Linear") or not params.get("o", "?").isdigit():
        return None
    out = int(params["o"])
    if name == "Linear":
        return _nearest(out, "linear_", (64, 128))
    k, s = params.get("k", "?"), params.get("s", "?")
    if params.get("g") == "dw":
        return "dwconv3"
    if not (k.isdigit() and s.isdigit()):
        return None
    k, s = int(k), int(s)
    if k == s > 1:
        return "patch4_64"
    if s >= 2:
        return "conv3s2_64"
    if k == 1:
        return _nearest(out, "conv1_", (16, 64))
    return "conv5v_16" if k >= 5 else _nearest(out, "conv3_", (16, 32, 64))


def _nearest(width: int, prefix: str, widths: tuple[int, ...]) -> str:
    """Nearest width on a log scale; ties go to the narrower."""
    return prefix + str(min(widths, key=lambda w: abs(math.log2(max(width, 1) / w))))
