"""Hostile model replies, round 20: idioms honest code uses too, which the fingerprint's reader
did not follow. A copy of `resnet` whose convolutions come from `conv3 =
functools.partial(nn.Conv2d, kernel_size=3, padding=1)`, from `type(self).C` or `Net.C` (a
class attribute), or from a staticmethod builder called as `Net.conv(3, 32)` read with its
convolutions missing and scored novelty 0.32-0.51, past the near-duplicate filter; the same
builder called as `self.conv(3, 32)` bound its arguments one place off (`self` is no
parameter of a staticmethod) and read the first convolution 3 channels wide. Each now reads
as, and runs as, the network it copies; where Python may find something else (a name bound
again, an argument computed at run time, a class attribute a subclass rebinds, keywords the
call spreads, a `functools` of the source's own) nothing is followed."""

from __future__ import annotations

import pytest
from test_hostile_round18 import RESNET, _above_net

from archrefine.code.code import static_check
from archrefine.code.fingerprint import fingerprint
from archrefine.code.novelty_code import structure
from archrefine.sandbox.sandbox import SandboxPool

FIRST = "nn.Conv2d(3, 32, kernel_size=3, padding=1)"
SAME = "nn.Conv2d(32, 32, kernel_size=3, padding=1)"
INIT = "    def __init__(self) -> None:"


def _convs(src: str, first: str, same: str) -> str:
    return src.replace(FIRST, first).replace(SAME, same)


def _in_class(src: str, code: str) -> str:
    return src.replace(INIT, code + "\n\n" + INIT, 1)


def _importing(src: str, line: str) -> str:
    return src.replace("import torch\n", f"{line}\nimport torch\n", 1)


def _partial(make: str, first: str = "conv3(3, 32)", same: str = "conv3(32, 32)") -> str:
    return _above_net(_convs(RESNET, first, same), f"conv3 = {make}")


STATIC = (
    "    @staticmethod\n    def conv(cin, cout):\n        return nn.Conv2d(cin, cout, 3, padding=1)"
)
CLASSM = STATIC.replace("@staticmethod", "@classmethod").replace("conv(cin", "conv(cls, cin")
C_ATTR = "    C = nn.Conv2d"
VARIANTS = {
    "partial-imported-by-name": _importing(
        _partial("partial(nn.Conv2d, kernel_size=3, padding=1)"), "from functools import partial"
    ),
    "functools-partial": _importing(
        _partial("functools.partial(nn.Conv2d, kernel_size=3, padding=1)"), "import functools"
    ),
    "partial-renamed": _importing(
        _partial("P(nn.Conv2d, kernel_size=3, padding=1)"), "from functools import partial as P"
    ),
    "partial-of-a-partial": _importing(
        _partial("partial(partial(nn.Conv2d, kernel_size=5), kernel_size=3, padding=1)"),
        "from functools import partial",
    ),
    "partial-with-a-module-constant": _importing(
        _partial("partial(nn.Conv2d, kernel_size=K, padding=1)").replace(
            "conv3 = ", "K = 3\nconv3 = ", 1
        ),
        "from functools import partial",
    ),
    "partial-of-an-alias": _importing(
        _partial("partial(Conv, kernel_size=3, padding=1)").replace(
            "conv3 = ", "Conv = nn.Conv2d\nconv3 = ", 1
        ),
        "from functools import partial",
    ),
    "partial-in-init-with-a-local-import": _convs(RESNET, "conv3(3, 32)", "conv3(32, 32)").replace(
        "super().__init__()",
        "super().__init__()\n        from functools import partial\n"
        "        conv3 = partial(nn.Conv2d, padding=1, kernel_size=3)",
    ),
    "partial-called-where-made": _importing(
        _convs(RESNET, "partial(nn.Conv2d, kernel_size=3)(3, 32, padding=1)", SAME),
        "from functools import partial",
    ),
    "partial-its-keyword-overridden": _importing(
        _partial(
            "partial(nn.Conv2d, kernel_size=5, padding=1)",
            "conv3(3, 32, kernel_size=3)",
            "conv3(32, 32, kernel_size=3)",
        ),
        "from functools import partial",
    ),
    "type-of-self-attribute": _in_class(_convs(RESNET, "type(self).C(3, 32, 3, padding=1)",
                                               "type(self).C(32, 32, 3, padding=1)"), C_ATTR),
    "class-attribute-by-the-class": _in_class(_convs(RESNET, "Net.C(3, 32, 3, padding=1)",
                                                     "Net.C(32, 32, 3, padding=1)"), C_ATTR),
    "staticmethod-through-self": _in_class(_convs(RESNET, "self.conv(3, 32)", "self.conv(32, 32)"),
                                           STATIC),
    "staticmethod-through-the-class": _in_class(
        _convs(RESNET, "Net.conv(3, 32)", "Net.conv(32, 32)"), STATIC
    ),
    "classmethod-through-the-class": _in_class(
        _convs(RESNET, "Net.conv(3, 32)", "Net.conv(32, 32)"), CLASSM
    ),
    "staticmethod-in-forward-by-the-class": _in_class(
        RESNET.replace("x = F.relu(x)\n        skip1", "x = Net.act(x)\n        skip1"),
        "    @staticmethod\n    def act(t):\n        return F.relu(t)",
    ),
}  # fmt: skip

# each runs another network than `resnet`, and must not read as it
FROM_PARTIAL = "from functools import partial"
OWN_FUNCTOOLS = "class functools:\n    partial = staticmethod(lambda f, **k: nn.LazyConv2d)\n\n\n"
DIFFERENT = {
    "partial-rebound-later": _importing(
        _partial("partial(nn.Conv2d, kernel_size=3, padding=1)")
        .replace("class Net", "conv3 = partial(nn.Conv2d, kernel_size=5, padding=2)\nclass Net"),
        FROM_PARTIAL,
    ),
    "partial-of-a-name-bound-again": _importing(
        _partial("partial(nn.Conv2d, kernel_size=k, padding=1)")
        .replace("conv3 = ", "k = 3\nk = 5\nconv3 = ", 1),
        FROM_PARTIAL,
    ),
    "partial-keyword-overridden-by-the-call": _importing(
        _partial("partial(nn.Conv2d, kernel_size=3, padding=1)", same="conv3(32, 32, padding=0)"),
        FROM_PARTIAL,
    ),
    "partial-of-the-source's-own": _partial("partial(nn.Conv2d, kernel_size=3, padding=1)")
    .replace("class Net", "def partial(f, **k):\n    return nn.LazyConv2d\n\n\nclass Net"),
    "functools-of-the-source's-own": _partial(
        "functools.partial(nn.Conv2d, kernel_size=3, padding=1)"
    ).replace("conv3 = ", OWN_FUNCTOOLS + "conv3 = ", 1),
    "type-attribute-a-subclass-rebinds": _in_class(
        _convs(RESNET, "type(self).C(3, 32, 3, padding=1)", "type(self).C(32, 32, 3, padding=1)"),
        C_ATTR,
    ).replace("class Net(nn.Module)", "class Base(nn.Module)")
    + "\n\nclass Net(Base):\n    C = nn.LazyConv2d\n\n    def forward(self, x):\n"
    "        return super().forward(x)\n",
    "staticmethod-other-widths": _in_class(_convs(RESNET, "self.conv(3, 64)", "self.conv(64, 64)"),
                                           STATIC),
}  # fmt: skip
# (runs a 64-wide first block: its own head then fails on 64 channels, so no sandbox run)
NOT_RUN = {"staticmethod-other-widths"}


@pytest.mark.parametrize("name", VARIANTS)
def test_a_copy_written_with_an_honest_idiom_reads_as_the_copy(name: str, archive) -> None:
    source = VARIANTS[name]
    assert static_check(source) == []
    assert fingerprint(source).detail == fingerprint(RESNET).detail
    assert archive.is_near_duplicate(source) and archive.score(source) == 0.0


@pytest.mark.parametrize("name", DIFFERENT)
def test_what_python_may_find_otherwise_is_not_followed(name: str, archive) -> None:
    source = DIFFERENT[name]
    assert static_check(source) == []
    assert structure(source) != structure(RESNET)
    assert not archive.is_near_duplicate(source)


@pytest.mark.slow
def test_each_runs_the_network_it_reads_as() -> None:
    """Run in the sandbox, every variant has `resnet`'s parameter count, and every network
    read as different has another (or fails where `resnet` runs)."""
    same, other = list(VARIANTS), [n for n in DIFFERENT if n not in NOT_RUN]
    sources = [VARIANTS[n] for n in same] + [DIFFERENT[n] for n in other] + [RESNET]
    with SandboxPool(2, timeout_s=60) as pool:
        outs = pool.map(sources, input_shape=(3, 32, 32))
    expected = outs[-1].params
    assert outs[-1].status == "ok"
    got = dict(zip(same, outs, strict=False))
    assert {n: (o.status, o.params) for n, o in got.items()} == dict.fromkeys(
        same, ("ok", expected)
    ), {n: o.reason for n, o in got.items()}
    differ = dict(zip(other, outs[len(same) :], strict=False))
    assert all(o.status != "ok" or o.params != expected for o in differ.values()), {
        n: (o.status, o.params) for n, o in differ.items()
    }
