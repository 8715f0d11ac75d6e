"""Hostile model replies, round 19: a second red-team review of the rewrite before the
fingerprint is read (`archrefine.code.aliases`). It found networks that read as `resnet` or
`mlp` but run another (a name rebound after a module-level instance was built, a `for`/`while`
`else` rewritten twice, a `:=` in a dropped item or a `match` guard, a handler read from the
bindings before its `try`, statements after a `raise` an own context manager suppresses, a
lambda bound late, `getattr` of a mangled name), nested loops' `else` costing twice the work
per level (13 s for 4.6 KB), and three sources whose reading raised another error than
CodeError."""

from __future__ import annotations

import contextlib
import time

import pytest
from test_hostile_round18 import (  # the same copies and the same ways to splice code in
    ALIASED,
    C32,
    MLP,
    RESNET,
    _above_net,
    _in_forward,
    _in_init,
)

from archrefine.code.code import CodeError, static_check
from archrefine.code.fingerprint import fingerprint
from archrefine.code.novelty_code import structure
from archrefine.sandbox.sandbox import SandboxPool

BODY = RESNET.replace("class Net", "class Body").replace("nn.BatchNorm2d(", "Norm(")
HOLDER = (
    "\n\nBODY = Body()\nNorm = nn.BatchNorm2d\n\n\nclass Net(nn.Module):\n"
    "    def __init__(self):\n        super().__init__()\n        self.b = BODY\n\n"
    "    def forward(self, x):\n        return self.b(x)\n"
)
LOOP_ELSE = (
    "import torch.ao.nn.quantized.dynamic as M\n\nLin = M.Linear\n\n\ndef helper(flag):\n"
    "    import torch.nn as M\n    {loop}\n        pass\n    else:\n        Lin\n    return M"
)
ELSEWHERE = {
    "name-rebound-after-an-instance": BODY.replace(
        "class Body", "Norm = nn.InstanceNorm2d\n\n\nclass Body", 1
    )
    + HOLDER,
    "getattr-of-a-mangled-name": _in_init(
        RESNET.replace("x = self.conv2(x)", 'x = getattr(self, "__c")(x)'),
        "self.__c = " + C32 + "\n        "
        'self.add_module("__c", nn.Conv2d(32, 32, kernel_size=5, padding=2))',
    ),
    "for-else": _above_net(
        MLP.replace("nn.Linear(3072, 128)", "Lin(3072, 128)"),
        LOOP_ELSE.format(loop="for _ in flag:"),
    ),
    "while-else": _above_net(
        MLP.replace("nn.Linear(3072, 128)", "Lin(3072, 128)"), LOOP_ELSE.format(loop="while flag:")
    ),
    "walrus-in-a-dropped-item": _above_net(
        ALIASED, "Conv = nn.Conv2d\nmake = [(Conv := nn.Identity), None][1]"
    ),
    "walrus-in-a-match-guard": _above_net(
        ALIASED, "Conv = nn.Conv2d\nmatch 0:\n    case 0 if (Conv := nn.Identity):\n        pass"
    ),
    "handler-after-part-of-its-try": _in_init(
        RESNET.replace(C32, "Conv2(32, 32, kernel_size=3, padding=1)"),
        "Conv = nn.Conv2d\n        try:\n            Conv2 = Conv\n            Conv = nn.Identity\n"
        "            raise ValueError\n        except ValueError:\n            Conv2 = Conv",
    ),
    "after-a-suppressed-raise": _above_net(
        _in_init(
            ALIASED,
            "with Quiet():\n            Conv = nn.Identity\n            raise ValueError\n"
            "            Conv = nn.Conv2d",
        ),
        "class Quiet:\n    def __enter__(self):\n        return self\n\n"
        "    def __exit__(self, *exc):\n        return True",
    ),
}
LATE_LAMBDA = _in_forward(
    RESNET.replace("x = F.relu(x)", "x = f(x)").replace(
        "        return x\n", "        act = F.relu\n        return x\n"
    ),
    "act = torch.tanh\n        f = lambda t: act(t)",
)
COPIES = {"for-else": MLP, "while-else": MLP}


@pytest.mark.parametrize("name", [*ELSEWHERE, "late-bound-lambda"])
def test_what_python_would_not_run_is_not_read(name: str, archive) -> None:
    source = ELSEWHERE.get(name, LATE_LAMBDA)
    assert static_check(source) == []
    assert structure(source) != structure(COPIES.get(name, RESNET))
    assert not archive.is_near_duplicate(source)


@pytest.mark.slow
def test_those_networks_differ_from_the_one_they_resemble() -> None:
    names = list(ELSEWHERE)
    sources = [ELSEWHERE[n] for n in names] + [RESNET, MLP]
    with SandboxPool(2, timeout_s=60) as pool:
        outs = pool.map(sources, input_shape=(3, 32, 32))
    assert all(o.status == "ok" for o in outs), [(n, o.reason) for n, o in zip(names, outs)]
    params = {RESNET: outs[-2].params, MLP: outs[-1].params}
    for name, out in zip(names, outs):
        assert out.params != params[COPIES.get(name, RESNET)], name


@pytest.mark.parametrize(
    ("where", "code"),
    [
        ("init", "for [a] in [[1]]:\n            pass"),
        ("init", "for self.k in [1]:\n            pass"),
        ("init", "self.m = nn.ModuleList([nn.Linear(3072, 10) for [i] in [[0]]])"),
        ("init", "q = [0]\n        x = [1 for q[0] in [1]]"),
        ("forward", "for _ in range(1, 2, 3, 4):\n            pass"),
        ("forward", "y = [0 for _ in range(*[1, 2, 3, 4])]"),
        ("forward", "y = x.mean(dim=([2], [3]))"),
    ],
)
def test_odd_targets_and_arguments_read_without_an_error(where: str, code: str) -> None:
    """Each raised ValueError or TypeError from the reader (zip(strict=True), `range` of four
    arguments, a set of lists); only CodeError may leave `fingerprint`."""
    source = (_in_init if where == "init" else _in_forward)(RESNET, code)
    with contextlib.suppress(CodeError):
        fingerprint(source)


@pytest.mark.parametrize("loop", ["while x:", "for _ in x:"])
def test_nested_loop_elses_cost_linear_work(loop: str) -> None:
    body = ""
    for depth in range(24):
        pad = "    " * depth
        body += f"{pad}{loop}\n{pad}    pass\n{pad}else:\n"
    body += "    " * 24 + "pass\n"
    start = time.monotonic()
    fingerprint(_above_net(RESNET, body))
    assert time.monotonic() - start < 5  # each level's `else` was rewritten twice: 2**24


@pytest.mark.parametrize("call", ["super().__init__(16)", "Base.__init__(self, 16)"])
def test_a_base_initialised_by_name_gets_its_arguments(call: str) -> None:
    """`Base.__init__(self, 16)` bound `self` to `c` (its `self` is an argument of the call
    but no parameter left to bind): the width read as unknown."""
    source = (
        "from torch import nn\n\n\nclass Base(nn.Module):\n    def __init__(self, c):\n"
        "        super().__init__()\n        self.conv = nn.Conv2d(3, c, 3)\n\n"
        "    def forward(self, x):\n        return self.conv(x)\n\n\n"
        f"class Net(Base):\n    def __init__(self):\n        {call}\n"
    )
    assert fingerprint(source).forward == ("Conv2d(o=16,k=3,s=1,p=0)",)
