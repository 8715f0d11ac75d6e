"""Hostile model replies, round 18: a copy of a known network whose layers are named in a way
the fingerprint's reader did not follow — `Conv = nn.Conv2d`, `act = F.relu`,
`getattr(nn, "Conv2d")`, a comprehension over constants, a module-level builder or helper, a
lambda, `R(*[32])`, `bias=bool(1)` — was read with those layers missing (or as `?`) and scored
novelty 0.26-0.62, past the near-duplicate filter with a known network's fitness. The source is
now rewritten before it is read (`archrefine.code.aliases.resolve`), only where Python would
find the same thing: each variant here must read as, and run as, the network it copies."""

from __future__ import annotations

import contextlib
import textwrap
import time

import pytest

from archrefine.code.code import CodeError, static_check
from archrefine.code.fingerprint import fingerprint
from archrefine.code.novelty_code import structure
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
    "default-argument-of-net": RESNET.replace(
        "def __init__(self) -> None:", "def __init__(self, conv=nn.Conv2d) -> None:"
    ).replace(CONV, "conv("),
    "class-attribute": RESNET.replace(
        "    def __init__(self) -> None:",
        "    conv_cls = nn.Conv2d\n\n    def __init__(self) -> None:",
    ).replace(CONV, "self.conv_cls("),
    "starred-arguments": _held("*[32]"),
    "double-starred-arguments": _held("**{'c': 32}"),
    "bool-of-a-constant": _held("32, bool(1)"),
    "int-of-a-constant": _held("int(32.0)"),
    "max-of-constants": _held("max(16, 32)"),
}
OF_MLP = {"comprehension-of-pairs", "comprehension-over-a-range", "loop-over-pairs"}
COPIES = {name: MLP if name in OF_MLP else RESNET for name in VARIANTS}


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


def test_a_builtin_the_source_defines_is_not_folded() -> None:
    """`bool(0)` under the source's own `bool` (which returns True here) is not False."""
    source = _held("32, bool(0)", "\n\ndef bool(v):\n    return True\n")
    assert fingerprint(source).detail[0] == "Conv2d(o=32,k=3,s=1,p=1)[bias='?']"
    assert fingerprint(_held("32, bool(0)")).detail[0] == "Conv2d(o=32,k=3,s=1,p=1)[bias=False]"


C32 = "nn.Conv2d(32, 32, kernel_size=3, padding=1)"
ALIASED = RESNET.replace(C32, "Conv(32, 32, kernel_size=3, padding=1)")
BUILDER = "def make(c):\n    return nn.Conv2d(c, c, kernel_size=3, padding=1)"
BLOCK = (
    "class Blk(nn.Module):\n    def __init__(self, c):\n        super().__init__()\n"
    "        self.c = nn.Conv2d(c, c, kernel_size={k}, padding={p})\n\n"
    "    def forward(self, x):\n        return self.c(x)\n"
)
# Each runs another network than `resnet` (found by a red-team review of the rewrite): a
# reading that followed the binding written last, or a module-level one, made them its twin
ELSEWHERE = {
    "try-except": _in_init(
        ALIASED,
        "try:\n            Conv = nn.Identity\n        except Exception:\n"
        "            Conv = nn.Conv2d",
    ),
    "if-at-run-time": _in_init(
        ALIASED,
        "if self.training:\n            Conv = nn.Identity\n        else:\n"
        "            Conv = nn.Conv2d",
    ),
    "match": _in_init(
        ALIASED,
        "match 0:\n            case 0:\n                Conv = nn.Identity\n"
        "            case _:\n                Conv = nn.Conv2d",
    ),
    "global-setter": _above_net(
        _in_init(ALIASED, "setup()"),
        "Conv = nn.Conv2d\n\n\ndef setup():\n    global Conv\n    Conv = nn.Identity",
    ),
    "own-getattr": _above_net(
        RESNET.replace(C32, 'getattr(nn, "Conv2d")(32, 32, kernel_size=3, padding=1)'),
        "def getattr(o, n):\n    return nn.Identity",
    ),
    "getattr-with-a-default": RESNET.replace(
        C32, 'getattr(nn, "Conv2d", nn.Identity)(32, 32, kernel_size=3, padding=1)'
    ).replace('"Conv2d", nn.Identity', '"Conv2x", nn.Identity'),
    "getattr-name-rebound": _above_net(
        RESNET.replace(C32, "getattr(nn, KIND)(32, 32, kernel_size=3, padding=1)"),
        'KIND = "Conv2d"\nKIND = "Identity".strip()',
    ),
    "walrus-that-never-runs": _above_net(
        ALIASED, "Conv = nn.Identity\n[(Conv := nn.Conv2d) for _ in []]\n0 and (Conv := nn.Conv2d)"
    ),
    "match-capture-of-a-builtin": _held(
        "32, max(0, 1)", "\n\nmatch min:\n    case max:\n        pass\n"
    ),
    "name-mangling": _above_net(
        RESNET.replace(C32, "__Conv(32, 32, kernel_size=3, padding=1)"),
        "__Conv = nn.Conv2d\n_Net__Conv = nn.Identity",
    ),
    "constant-changed-later": _above_net(
        ALIASED, "USE = True\nConv = nn.Conv2d\nif USE:\n    Conv = nn.Identity\nUSE = False"
    ),
    "import-in-another-function": _above_net(
        RESNET.replace(C32, "C(32, 32, kernel_size=3, padding=1)"),
        "from torch.nn import Identity as C\n\n\ndef other():\n"
        "    from torch.nn import Conv2d as C\n    return C",
    ),
    "builder-shadowed-by-a-parameter": _above_net(
        RESNET.replace(C32, "make(32)").replace(
            "def __init__(self) -> None:",
            "def __init__(self, make=lambda c: nn.Conv2d(c, c, 5, padding=2)) -> None:",
        ),
        BUILDER,
    ),
    "builder-rebound": _above_net(
        RESNET.replace(C32, "make(32)"),
        BUILDER + "\n\n\ndef make5(c):\n    return nn.Conv2d(c, c, kernel_size=5, padding=2)"
        "\n\n\nmake = make5",
    ),
    "keyword-only-default": _above_net(
        RESNET.replace(C32, "make(32)"),
        "def make(c, *, k=5):\n    return nn.Conv2d(c, c, kernel_size=k, padding=k // 2)\n"
        "\n\nk = 3",
    ),
    "helper-shadowed-in-forward": _above_net(
        _in_forward(RESNET.replace("F.relu(", "act("), "act = nn.Tanh()"),
        "def act(t):\n    return F.relu(t)",
    ),
    "class-attribute-set-on-the-instance": RESNET.replace(
        "    def __init__(self) -> None:",
        "    conv_cls = nn.Conv2d\n\n    def __init__(self) -> None:",
    )
    .replace(C32, "self.conv_cls(32, 32, kernel_size=3, padding=1)")
    .replace("super().__init__()", "super().__init__()\n        self.conv_cls = nn.Identity"),
    "class-attribute-of-a-subclass": RESNET.replace(
        "class Net(nn.Module):", "class Base(nn.Module):"
    )
    .replace(
        "    def __init__(self) -> None:",
        "    conv_cls = nn.Conv2d\n\n    def __init__(self) -> None:",
    )
    .replace(C32, "self.conv_cls(32, 32, kernel_size=3, padding=1)")
    + "\n\nclass Net(Base):\n    conv_cls = nn.Identity\n\n    def forward(self, x):\n"
    "        return super().forward(x)\n",
    "class-redefined": _above_net(
        RESNET.replace(C32, "B(32)"),
        BLOCK.format(k=5, p=2) + "\n\nB = Blk\n\n\n" + BLOCK.format(k=3, p=1),
    ),
}


@pytest.mark.parametrize("name", ELSEWHERE)
def test_a_binding_python_would_not_use_is_not_followed(name: str, archive) -> None:
    source = ELSEWHERE[name]
    assert static_check(source) == []
    assert structure(source) != structure(RESNET)
    assert not archive.is_near_duplicate(source) and archive.score(source) > 0.1


@pytest.mark.slow
def test_the_networks_read_as_different_do_differ() -> None:
    """Each of `ELSEWHERE` runs, with another parameter count than `resnet`'s (or, for the
    activation, another op: `nn.Tanh` has none)."""
    names = [n for n in ELSEWHERE if n != "helper-shadowed-in-forward"]
    with SandboxPool(2, timeout_s=60) as pool:
        outs = pool.map([ELSEWHERE[n] for n in names] + [RESNET], input_shape=(3, 32, 32))
    assert all(o.status == "ok" for o in outs), [(n, o.reason) for n, o in zip(names, outs)]
    assert all(o.params != outs[-1].params for o in outs[:-1]), [o.params for o in outs]


@pytest.mark.parametrize(
    "body",
    [
        "f(" + ", ".join(f"a{i}=0" for i in range(20000)) + ")\n",  # 46 s: a set per keyword
        "".join(f"A{i} = nn.X\n" for i in range(9000)) + "f = lambda: 0\n" * 3000,
        "".join(f"A{i} = nn.X\n" for i in range(9000)) + "if 0:\n    0\n" * 6000,
        "".join(f"A{i} = nn.X\n" for i in range(9000)) + "[0 for _ in []]\n" * 5000,
    ],
    ids=["keywords", "aliases-into-lambdas", "aliases-into-branches", "aliases-into-comps"],
)
def test_the_rewrite_costs_little_or_refuses(body: str) -> None:
    """Copying every alias into each scope, branch or comprehension took 15-42 s and 770 MB for
    185 KB; it now counts against the reader's budget ("too intricate")."""
    source = _above_net(RESNET, body)
    assert len(source) < 200_000
    start = time.monotonic()
    with contextlib.suppress(CodeError):
        fingerprint(source)
    assert time.monotonic() - start < 5
