"""How a call in model-written PyTorch code is named as an op of its fingerprint.

`op_name` maps a module, functional or tensor-method call (`nn.Conv2d(3, 32, 3)`,
`F.relu(x)`, `x.mean(dim=(2, 3))`) to the normalized op `archrefine.code.fingerprint` lists
(docs/real-loop.md has the table), reading its arguments as constants where they are; the
arguments of `HYPER` that differ from their defaults follow after `DETAIL`.
"""

from __future__ import annotations

import ast

from archrefine.code.ast_helpers import UNKNOWN, arg_node, literal_arg, literal_value
from archrefine.code.reachable import same_shape_view

__all__ = ["ACTIVATIONS", "DETAIL", "HYPER", "MAX_OP", "PLAIN_OPS", "op_name"]

# fmt: off
ACTIVATIONS = {n.lower(): n for n in ("ReLU", "ReLU6", "LeakyReLU", "ELU", "GELU", "SiLU", "Mish",
               "Hardswish", "Sigmoid", "Tanh", "Softmax", "LogSoftmax")}  # fmt: skip
PLAIN_OPS = ACTIVATIONS | {
    "dropout": "Dropout", "dropout2d": "Dropout", "alphadropout": "Dropout",
    "batchnorm1d": "BatchNorm", "batchnorm2d": "BatchNorm", "batch_norm": "BatchNorm",
    "layernorm": "LayerNorm", "layer_norm": "LayerNorm", "groupnorm": "GroupNorm",
    "group_norm": "GroupNorm", "instancenorm2d": "InstanceNorm", "flatten": "Flatten",
    "multiheadattention": "Attention", "scaled_dot_product_attention": "Attention",
    "log_softmax": "LogSoftmax", "leaky_relu": "LeakyReLU", "identity": "", "add": "Add",
    "mul": "Mul", "matmul": "MatMul", "bmm": "MatMul", "cat": "Cat",
}  # fmt: skip
"""Lower-cased module, functional and tensor-method names that need no parameters."""
_P, _SLOPE = {"p": (0, 0.5)}, {"negative_slope": (0, 0.01)}
HYPER = {
    "dropout": _P,
    "dropout2d": _P,
    "alphadropout": _P,
    "leakyrelu": _SLOPE,
    "leaky_relu": _SLOPE,
    "elu": {"alpha": (0, 1.0)},
    "conv2d": {"dilation": (5, 1), "bias": (7, True), "padding_mode": (8, "zeros")},
}
"""Arguments (position after the tensor, default) written into an op's `Fingerprint.detail`
when set to something else: they change the network, though the op names leave them out."""
DETAIL = "\x00"  # between an op and its HYPER arguments while reading (code has no NUL)
MAX_OP = 80
"""Characters of one op (a name as written, or a layer with its arguments) kept: the budget
counts ops, not their length, and a 100,000-character method name called 5,000 times made a
canonical form of 500 MB."""
# fmt: on


def op_name(name: str, call: ast.Call, offset: int, consts: dict) -> str:
    """The normalized op for module/function/method `name` called as `call`, at most
    `MAX_OP` characters; the tensor is the first argument when offset is 1 (functional
    form)."""
    op = _plain(name[:MAX_OP], call, offset, consts)[:MAX_OP]
    hyper = HYPER.get(name[:MAX_OP].lower().rstrip("_"), {}) if op else {}
    if offset and name.lower() == "conv2d":
        hyper = {}  # F.conv2d(x, weight, ...) is read by name only
    values = {k: literal_arg(call, i + offset, k, d, consts) for k, (i, d) in hyper.items()}
    set_ = [f"{k}={'?' if v is UNKNOWN else v!r}"[:MAX_OP] for k, (_, d) in hyper.items()
            if (v := values[k]) != d and not (isinstance(v, bool) and v == d)]  # fmt: skip
    return f"{op}{DETAIL}[{','.join(set_)}]" if set_ else op


def _plain(name: str, call: ast.Call, offset: int, consts: dict) -> str:
    key = name.lower().rstrip("_")

    def arg(i: int, kw: str, default: object = "?") -> object:
        return literal_arg(call, i + offset, kw, default, consts)

    if key in PLAIN_OPS:
        return PLAIN_OPS[key]
    if key == "conv2d" and offset == 0:
        out, k, g = arg(1, "out_channels"), arg(2, "kernel_size"), arg(6, "groups", 1)
        s, p = arg(3, "stride", 1), arg(4, "padding", 0)
        cin, groups = arg_node(call, 0, "in_channels"), arg_node(call, 6, "groups")
        same = cin is not None and groups is not None and ast.dump(cin) == ast.dump(groups)
        dw = g != 1 and (same or (g != "?" and g == arg(0, "in_channels")))
        extra = ",g=dw" if dw else ("" if g == 1 else f",g={g}")
        return f"Conv2d(o={out},k={k},s={s},p={p}{extra})"
    if key in ("maxpool2d", "max_pool2d", "avgpool2d", "avg_pool2d"):
        k = arg(0, "kernel_size")
        return f"{'Max' if 'max' in key else 'Avg'}Pool2d(k={k},s={arg(1, 'stride', k) or k})"
    if key.startswith("adaptive"):
        size = arg(0, "output_size")
        kind = "Max" if "max" in key else "Avg"
        return f"Global{kind}Pool" if size == 1 else f"Adaptive{kind}Pool2d(o={size})"
    if key == "mean":
        dims = arg(0, "dim")
        ints = isinstance(dims, tuple | list) and all(type(d) is int for d in dims)
        spatial = ints and set(dims) in ({2, 3}, {-2, -1})  # (not `dim=([2], [3])`)
        return "GlobalAvgPool" if spatial else "Mean"
    if key in ("linear", "lazylinear") and offset == 0:
        return f"Linear(o={arg(1 if key == 'linear' else 0, 'out_features')})"
    if key in ("view", "reshape", "view_as", "reshape_as") and same_shape_view(call, offset):
        return ""  # x.view(x.shape), x.reshape(*x.size()), x.view_as(x): no op
    if key in ("view", "reshape"):
        flat = len(call.args) == 2 + offset and literal_value(call.args[-1], consts) == -1
        return "Flatten" if flat else "Reshape"
    return name
