"""Hostile model replies, round 18: a copy of a known network whose layers are named in a way
the fingerprint's reader did not follow — `Conv = nn.Conv2d`, `act = F.relu`,
`getattr(nn, "Conv2d")`, a comprehension over constants, a module-level builder or helper, a
lambda, `R(*[32])`, `bias=bool(1)` — was read with those layers missing (or as `?`) and scored
novelty 0.26-0.62, past the near-duplicate filter with a known network's fitness. The source is
now rewritten before it is read (`archrefine.code.aliases.resolve`), only where Python would
find the same thing: each variant here must read as, and run as, the network it copies."""

from __future__ import annotations

import textwrap
import time

import pytest

from archrefine.code.code import CodeError, static_check
from archrefine.code.fingerprint import fingerprint
from archrefine.code.novelty_code import CodeNovelty, structure
from archrefine.sandbox.pool import SandboxPool
from archrefine.space import KNOWN, to_source

RESNET, MLP = to_source(KNOWN["resnet"]), to_source(KNOWN["mlp"])
CONV = "nn.Conv2d("


def _above_net(src: str, code: str) -> str:
    return src.replace("class Net", f"{code}\n\n\nclass Net")


def _in_init(src: str, code: str) -> str:
    return src.replace("super().__init__()", "super().__init__()\n        " + code)


def _in_forward(src: str, code: str) -> str:
    return src.replace("# x: (batch, 3, 32, 32)", code)


MLP_BODY = ("        self.fc1 = nn.Linear(3072, 128)\n        self.fc2 = nn.Linear(128, 64)\n",
            "        x = self.fc1(x)  # (batch, 128)\n        x = F.relu(x)\n"
            "        x = self.fc2(x)  # (batch, 64)\n        x = F.relu(x)\n")  # fmt: skip


def _mlp(init: str, forward: str, above: str = "") -> str:
    src = MLP.replace(MLP_BODY[0], init).replace(MLP_BODY[1], forward)
    return _above_net(src, above) if above else src


LOOP = "        for fc in self.fcs:\n            x = F.relu(fc(x))\n"
# the copy's first width a parameter of a class `R` that `Net` builds
R_ARGS = (
    RESNET.replace("class Net", "class R")
    .replace("def __init__(self) -> None:", "def __init__(self, c, b=True) -> None:")
    .replace("nn.Conv2d(3, 32,", "nn.Conv2d(3, c, bias=b,")
)


def _held(args: str, extra: str = "") -> str:
    return (
        R_ARGS
        + extra
        + textwrap.dedent(f"""

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.r = R({args})

            def forward(self, x):
                return self.r(x)
        """)
    )


VARIANTS = {
    "getattr-on-nn": RESNET.replace(CONV, 'getattr(nn, "Conv2d")('),
    "getattr-on-torch-nn": RESNET.replace(CONV, 'getattr(torch.nn, "Conv2d")('),
    "getattr-named-by-a-constant": _above_net(
        RESNET.replace(CONV, "getattr(nn, KIND)("), 'KIND = "Conv2d"'
    ),
    "getattr-on-F": RESNET.replace("F.relu(", 'getattr(F, "relu")('),
    "module-alias": _above_net(RESNET.replace(CONV, "Conv("), "Conv = nn.Conv2d"),
    "alias-of-an-alias": _above_net(RESNET.replace(CONV, "Conv("), "L = torch.nn\nConv = L.Conv2d"),
    "init-alias": _in_init(RESNET.replace(CONV, "Conv("), "Conv = nn.Conv2d"),
    "rebound-alias": _in_init(
        _above_net(RESNET.replace(CONV, "Conv("), "Conv = nn.Identity"), "Conv = nn.Conv2d"
    ),
    "function-alias": _above_net(RESNET.replace("F.relu(", "act("), "act = F.relu"),
    "forward-alias": _in_forward(RESNET.replace("F.relu(", "act("), "act = F.relu"),
    "forward-lambda": _in_forward(RESNET.replace("F.relu(", "act("), "act = lambda t: F.relu(t)"),
    "module-lambda": _above_net(RESNET.replace("F.relu(", "act("), "act = lambda t: F.relu(t)"),
    "called-lambda": RESNET.replace("F.relu(x)", "(lambda t: F.relu(t))(x)"),
    "local-function": _in_forward(
        RESNET.replace("F.relu(", "act("), "def act(t):\n            return F.relu(t)\n"
    ),
    "module-function": _above_net(
        RESNET.replace("F.relu(", "act("), "def act(t):\n    return F.relu(t)"
    ),
    "module-builder": _above_net(
        RESNET.replace("nn.Conv2d(3, 32, kernel_size=3, padding=1)", "make(3)"),
        "def make(c):\n    return nn.Conv2d(c, 32, kernel_size=3, padding=1)",
    ),
    "walrus-in-a-comprehension": _in_init(
        _above_net(RESNET.replace(CONV, "Conv("), "Conv = nn.Identity"),
        "[(Conv := nn.Conv2d) for _ in [0]]",
    ),
    "comprehension-of-pairs": _mlp(
        "        self.fcs = nn.ModuleList([nn.Linear(a, b)"
        " for a, b in [(3072, 128), (128, 64)]])\n",
        LOOP,
    ),
    "comprehension-over-a-range": _mlp(
        "        self.fcs = nn.Sequential(*[nn.Sequential(nn.Linear(W[i], W[i + 1]), nn.ReLU())"
        " for i in range(2)])\n",
        "        x = self.fcs(x)\n",
        above="W = [3072, 128, 64]",
    ),
    "loop-over-pairs": _mlp(
        "        self.fcs = nn.ModuleList()\n        for a, b in [(3072, 128), (128, 64)]:\n"
        "            self.fcs.append(nn.Linear(a, b))\n",
        LOOP,
    ),
    "starred-arguments": _held("*[32]"),
    "double-starred-arguments": _held("**{'c': 32}"),
    "bool-of-a-constant": _held("32, bool(1)"),
    "int-of-a-constant": _held("int(32.0)"),
    "max-of-constants": _held("max(16, 32)"),
    "shadowed-builtin": _held("32, bool(0)", "\n\ndef bool(v):\n    return True\n"),
}
OF_MLP = {"comprehension-of-pairs", "comprehension-over-a-range", "loop-over-pairs"}
COPIES = {name: MLP if name in OF_MLP else RESNET for name in VARIANTS}


@pytest.fixture(scope="module")
def archive() -> CodeNovelty:
    nov = CodeNovelty(twins=True)
    nov.seed_with_known()
    return nov


@pytest.mark.parametrize("name", VARIANTS)
def test_a_copy_written_through_an_indirection_reads_as_the_copy(name: str, archive) -> None:
    source, copy = VARIANTS[name], COPIES[name]
    assert static_check(source) == []
    assert fingerprint(source).detail == fingerprint(copy).detail
    assert structure(source) == structure(copy)
    assert archive.is_near_duplicate(source) and archive.score(source) == 0.0


@pytest.mark.slow
def test_each_variant_runs_the_network_it_copies() -> None:
    """The rewrite must only ever say what Python does: run in the sandbox, each variant has
    its copy's parameter count (and `bool(0)` under a shadowing `bool` the default bias)."""
    names = list(VARIANTS)
    with SandboxPool(2, timeout_s=60) as pool:
        outs = pool.map([VARIANTS[n] for n in names] + [RESNET, MLP], input_shape=(3, 32, 32))
    expected = {RESNET: outs[-2].params, MLP: outs[-1].params}
    assert all(o.status == "ok" for o in outs), [(n, o.reason) for n, o in zip(names, outs)]
    assert {n: o.params for n, o in zip(names, outs)} == {n: expected[COPIES[n]] for n in names}


DIFFERENT = {
    # what runs differs from the copy, and so must the reading
    "bool-of-zero": _held("32, bool(0)"),
    "alias-rebound-after": _in_init(RESNET.replace(CONV, "Conv(", 1), "Conv = nn.Conv2d")
    .replace("self.bn1", "Conv = nn.LazyConv2d\n        self.bn1", 1)
    .replace(CONV, "Conv(", 1),
    "local-alias-elsewhere": _above_net(
        RESNET.replace(CONV, "Conv("),
        "Conv = nn.LazyConv2d\n\n\ndef other():\n    Conv = nn.Conv2d\n    return Conv",
    ),
    "dead-branch-only": _above_net(
        RESNET.replace(CONV, "Conv("), "Conv = nn.LazyConv2d\nif False:\n    Conv = nn.Conv2d"
    ),
    "computed-getattr": RESNET.replace(CONV, 'getattr(nn, "conv2d".title().replace("d", "D"))('),
    "comprehension-widths": _mlp(
        "        self.fcs = nn.ModuleList([nn.Linear(a, b)"
        " for a, b in [(3072, 256), (256, 64)]])\n",
        LOOP,
    ),
}


@pytest.mark.parametrize("name", DIFFERENT)
def test_the_rewrite_does_not_read_what_does_not_run(name: str, archive) -> None:
    """A binding Python would not use at that point (rebound later, local to another function,
    in a branch that never runs, a name computed at run time) is not followed; other constants
    read as themselves."""
    source = DIFFERENT[name]
    assert static_check(source) == []
    assert structure(source) not in (structure(RESNET), structure(MLP))
    assert not archive.is_near_duplicate(source)


def test_comprehensions_nested_past_the_budget_are_refused_quickly() -> None:
    loops = "".join(f" for {v} in range(32)]" for v in "abcde")
    init = "        self.fcs = nn.ModuleList(" + "[" * 5 + "nn.ReLU()" + loops + ")\n"
    start = time.monotonic()
    with pytest.raises(CodeError, match="too intricate"):
        fingerprint(_mlp(init, LOOP))
    assert time.monotonic() - start < 10  # 32**5 passes without the budget


def test_long_alias_chains_stay_small() -> None:
    """Each alias stands for a dotted name of at most `MAX_PARTS` parts: aliases of aliases
    (`A1 = nn.X`, `A2 = A1.y`, ...) grew every use by one more part."""
    chain = "A0 = nn\n" + "".join(f"A{i + 1} = A{i}.b\n" for i in range(2000))
    uses = "y = (" + ", ".join(f"A{i}" for i in range(0, 2000, 3)) + ")\n"
    source = _above_net(RESNET, chain + uses)
    assert fingerprint(source).detail == fingerprint(RESNET).detail
