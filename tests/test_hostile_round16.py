"""Hostile model replies, round 16: a copy of a known network that `Net` reaches in a way the
fingerprint's reader does not follow — `getattr(self, "r")(x)`, a dict, a local variable or
function, `self.r.forward(x)`, a lambda, `map` — was read as an empty `Net` and scored as
novel text (0.19–0.29), so it passed the near-duplicate filter with a known network's fitness.
Every network a source holds besides `Net` is now read too (`Fingerprint.held`), and one that
runs exactly an archived network makes the source its twin, unless `Net` is read to run it
inside a larger network."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from archrefine.code import fingerprint as fp
from archrefine.code.code import CodeError, static_check
from archrefine.code.fingerprint import fingerprint
from archrefine.code.novelty_code import CodeNovelty, held_structures, structure
from archrefine.real.replies import row
from archrefine.space import KNOWN, VOCAB, is_valid, to_source

RESNET = to_source(KNOWN["resnet"])
IMPORTS = "import torch\nimport torch.nn.functional as F\nfrom torch import nn\n\n\n"
COPY = RESNET.replace("class Net", "class R")[RESNET.index("class Net") :]  # resnet, renamed
ARGS = COPY.replace("(self) -> None:", "(self, c) -> None:")
ARGS = ARGS.replace("Conv2d(3, 32,", "Conv2d(3, c,")  # the copy's width an argument
NET = "\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
HOLD = NET + "        self.r = R()\n\n    def forward(self, x):\n"
NESTED = "class Net(nn.Module):\n" + textwrap.indent(COPY, "    ") + "\n    def __init__(self):\n"
NESTED += "        super().__init__()\n        self.r = self.R()\n\n    def forward(self, x):\n"
NESTED += "        return getattr(self, 'r'.lower())(x)\n"  # the copy a class nested in `Net`


def known(twins: bool = True) -> CodeNovelty:
    """An archive of `KNOWN`'s sources (with structural twins, or the text alone)."""
    nov = CodeNovelty(twins=twins)
    nov.seed_with_known()
    return nov


@pytest.fixture(scope="module")
def archive() -> CodeNovelty:
    return known()


@pytest.mark.parametrize(
    ("copy", "net"),
    [
        (COPY, HOLD + "        return getattr(self, 'r'.lower())(x)\n"),
        (COPY, HOLD + "        return {'m': self.r}['m'.lower()](x)\n"),
        (COPY, HOLD + "        m = self.r\n        return m(x)\n"),
        (COPY, HOLD + "        return self.r.forward(x)\n"),
        (COPY, HOLD + "        return self.r.__call__(x)\n"),
        (COPY, HOLD + "        return (lambda m: m(x))(self.r)\n"),
        (COPY, HOLD + "        return list(map(self.r, [x]))[0]\n"),
        (COPY, HOLD + "        return (self.r,)[x.dim() - 4](x)\n"),
        (COPY, HOLD + "        return R.forward(self.r, x)\n"),
        (COPY, HOLD + "        return ([] or self.r)(x)\n"),
        (COPY, "\n\ndef run(m, x):\n    return m(x)\n" + HOLD + "        return run(self.r, x)\n"),
        (
            COPY,
            HOLD.replace("R()", "R()\n        self.h = nn.Linear(10, 10)")
            + "        return self.h(getattr(self, 'r'.lower())(x))\n",
        ),  # a visible head on a hidden copy
        (ARGS, HOLD.replace("R()", "R(32)") + "        return getattr(self, 'r'.lower())(x)\n"),
        (
            ARGS,
            "\n\nMODEL = R(32)\n" + NET + "        self.h = nn.Identity()\n\n"
            "    def forward(self, x):\n        return {'m': MODEL}['m'.lower()](x)\n",
        ),
        (
            COPY,
            HOLD.replace("R()", "self.make()") + "        return getattr(self, 'r'.lower())(x)\n\n"
            "    def make(self):\n        return R()\n",
        ),
        (COPY, HOLD + "        return (m := self.r)(x)\n"),
        ("", NESTED),
        (
            "",
            "def make():\n"
            + textwrap.indent(COPY, "    ")
            + "    return R()\n"
            + NET
            + "        self.r = make()\n\n    def forward(self, x):\n"
            "        return getattr(self, 'r'.lower())(x)\n",
        ),  # fmt: skip
        ("class R(nn.Module):\n    def forward(self, x):\n        return x\n", NESTED),
    ],
    ids=[
        "getattr",
        "dict",
        "local-variable",
        "forward-method",
        "dunder-call",
        "lambda",
        "map",
        "tuple",
        "class-forward",
        "or",
        "local-function",
        "hidden-under-a-head",
        "arguments",
        "module-instance",
        "builder-method",
        "walrus",
        "nested-class",
        "class-in-a-function",
        "nested-namesake",
    ],  # fmt: skip
)
def test_a_copy_the_reader_cannot_follow_is_a_near_duplicate(copy: str, net: str, archive) -> None:
    source = IMPORTS + copy + net
    assert static_check(source) == []
    assert structure(source) != structure(RESNET)  # `Net` alone is not read as the copy
    assert structure(RESNET) in held_structures(source)
    assert archive.is_near_duplicate(source)
    assert archive.score(source) == 0.0  # the old score: 0.20-0.29, under the 0.90 bar
    assert archive.near_duplicates(source) == ["known:resnet"]
    stored = row(1, "p", f"```python\n{source}```", [])  # the static checks pass it
    assert "status" not in stored and stored["fingerprint"]  # not rejected


def test_a_network_that_runs_a_known_one_under_a_new_head_is_not_its_copy(archive) -> None:
    source = IMPORTS + COPY + HOLD.replace("R()", "R()\n        self.h = nn.Linear(10, 10)")
    source += "        return self.h(F.relu(self.r(x)))\n"
    ops = fingerprint(source).detail
    assert ops[-2:] == ("ReLU", "Linear(o=10)") and structure(source) is not None
    assert held_structures(source) == []  # `Net` is read to run the copy, and more
    assert not archive.is_near_duplicate(source)
    assert 0.0 < archive.score(source) < 0.5


def test_an_unread_op_decides_nothing_about_what_net_visibly_runs() -> None:
    """`self.add_module("act", ...)` reads as `?`. A `Net` read as more than a held network
    (plus `?`) is not its copy; one read as the copy plus only `?` may be the copy alone."""
    nov = known()
    flat = IMPORTS + NET + "        self.f = nn.Linear(3 * 32 * 32, 10)\n\n"
    nov.add("flat", flat + "    def forward(self, x):\n        return self.f(x.flatten(1))\n")
    honest = NET + "        self.conv = nn.Conv2d(3, 8, 3)\n"
    honest += "        self.add_module('act', nn.ReLU())\n"
    honest += "        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 30 * 30, 10))\n\n"
    honest += "    def forward(self, x):\n        return self.head(self.act(self.conv(x)))\n"
    source = IMPORTS + honest
    assert fingerprint(source).detail == ("Conv2d(o=8,k=3,s=1,p=0)", "?", "Flatten", "Linear(o=10)")
    assert structure(source) is None and not nov.is_near_duplicate(source)
    copy = HOLD.replace("R()", "R()\n        self.add_module('act', nn.Identity())")
    source = IMPORTS + COPY + copy + "        return self.act(self.r(x))\n"
    assert fingerprint(source).detail[-1] == "?" and structure(source) is None
    assert nov.near_duplicates(source) == ["known:resnet"]


MLP = """class MLP(nn.Module):
    def __init__(self, hidden=128):
        super().__init__()
        self.fc1 = nn.Linear(3072, hidden)
        self.fc2 = nn.Linear(hidden, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.head(x)
"""


@pytest.mark.parametrize(
    "net",
    [
        NET + "        self.mlp = MLP(hidden=512)\n\n    def forward(self, x):\n"
        "        return self.mlp(x)\n",
        "\n\nclass Net(MLP):\n    def __init__(self):\n        super().__init__(hidden=512)\n\n"
        "    def forward(self, x):\n        return super().forward(x)\n",
    ],
    ids=["configured", "subclassed"],
)
def test_a_configurable_class_whose_defaults_are_a_known_network_is_read_as_configured(
    net: str, archive
) -> None:
    """Found by a red-team review: its reading with defaults is `known:mlp`, what runs is
    512 wide; it was made `mlp`'s twin (novelty 0, against 0.82 on text alone)."""
    source = IMPORTS + MLP + net
    assert "Linear(o=512)" in fingerprint(source).detail
    assert not archive.is_near_duplicate(source) and archive.score(source) > 0.5
    hidden = IMPORTS + MLP + NET + "        self.m = MLP()\n\n    def forward(self, x):\n"
    assert archive.near_duplicates(hidden + "        return getattr(self, 'm')(x)\n") == [
        "known:mlp"
    ]  # built with its defaults and called unseen: the copy


def test_an_ensemble_with_a_known_member_is_not_its_copy(archive) -> None:
    """`inp = x; (self.a(inp) + self.b(inp)) / 2` reads `Save, Proj, Proj, Add`: `Net` runs
    the known network inside a larger one (found by a red-team review: it was a twin)."""
    ensemble = HOLD.replace("R()", "R()\n        self.b = nn.Sequential(nn.Flatten(), "
                            "nn.Linear(3072, 10))")  # fmt: skip
    source = IMPORTS + COPY + ensemble + "        inp = x\n"
    assert not archive.is_near_duplicate(
        source + "        return (self.r(inp) + self.b(inp)) / 2\n"
    )
    alone = IMPORTS + COPY + HOLD + "        inp = x\n        return self.r(inp)\n"
    assert fingerprint(alone).detail == ("Save", "Proj")
    assert archive.near_duplicates(alone) == ["known:resnet"]  # read `Proj` alone: the copy


def test_a_known_network_left_beside_a_new_net_is_a_near_duplicate(archive) -> None:
    """The price of the rule, documented: an unused class that is an archived network is
    counted, as `Net` might reach it in a way the reader does not follow."""
    source = IMPORTS + COPY + NET + "        self.c = nn.Conv2d(3, 8, 3)\n"
    source += "        self.h = nn.Linear(8, 10)\n\n    def forward(self, x):\n"
    source += "        return self.h(self.c(x).mean((2, 3)))\n"
    assert structure(source) is not None and structure(source) != structure(RESNET)
    assert archive.near_duplicates(source) == ["known:resnet"]
    assert not known(twins=False).is_near_duplicate(source)  # text alone, as a plain filter


def test_honest_networks_are_judged_as_before(archive) -> None:
    """Random valid networks of the space, against an archive of the known ones and others:
    the networks they hold never make one a twin it was not before."""
    rng = np.random.default_rng(16)
    seqs = rng.integers(0, len(VOCAB), (1500, len(KNOWN["resnet"])))
    sources = [to_source(s) for s in seqs[is_valid(seqs)][:60]]
    helper = IMPORTS + "class Block(nn.Module):\n    def __init__(self, c):\n"
    helper += "        super().__init__()\n        self.conv = nn.Conv2d(c, c, 3, padding=1)\n"
    helper += "        self.bn = nn.BatchNorm2d(c)\n\n    def forward(self, x):\n"
    helper += "        return F.relu(self.bn(self.conv(x))) + x\n"
    helper += NET + "        self.stem = nn.Conv2d(3, 16, 3, padding=1)\n"
    helper += "        self.blocks = nn.Sequential(Block(16), Block(16))\n"
    helper += "        self.head = nn.Linear(16, 10)\n\n    def forward(self, x):\n"
    sources.append(helper + "        return self.head(self.blocks(self.stem(x)).mean((2, 3)))\n")
    nov = known()
    for i, source in enumerate(sources[:30]):
        nov.add(f"a{i}", source)
    assert any(fingerprint(s).held for s in sources)
    for source in sources[30:]:
        twins = {k for k, v in nov.similarities(source).items() if v == 1.0}
        same = {k for k in twins if structure(source) is not None}
        assert twins == same  # only a `Net` twin, never one through a held network
        assert set(nov._same(source)) <= twins


def test_a_copy_behind_many_decoy_classes_is_still_read_and_the_reading_is_bounded(
    archive, monkeypatch
) -> None:
    decoys = "".join(
        f"class C{i}(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        f"        self.f = nn.Linear(10, {i + 1})\n\n    def forward(self, x):\n"
        "        return self.f(x)\n\n\n"
        for i in range(300)
    )
    source = IMPORTS + decoys + COPY + HOLD + "        return getattr(self, 'r'.lower())(x)\n"
    found = fingerprint(source)
    assert len(found.held) == 301  # 300 decoys, the copy (an attribute and a class: one)
    assert archive.near_duplicates(source) == ["known:resnet"]
    alone = IMPORTS + NET + "        self.f = nn.Linear(4, 10)\n\n    def forward(self, x):\n"
    alone += "        return self.f(x)\n"
    monkeypatch.setattr(fp, "BUDGET", 2_000)  # `Net` alone fits; the decoys do not
    assert fp.fingerprint(alone + "\n# read afresh\n").forward == ("Linear(o=10)",)
    bare = source.replace(decoys, "") + "\n# read afresh\n"
    assert structure(RESNET) in held_structures(bare)  # the copy alone fits the budget
    with pytest.raises(CodeError, match="too intricate to read"):  # decoys spent the budget
        fp.fingerprint(source + "\n# read afresh\n")
