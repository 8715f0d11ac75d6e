"""Hostile model replies, round 14: a copy of a known network made to look novel by hiding it
from the fingerprint — rebound to `Net` after a decoy `class Net`, patched in through a
decorator, a metaclass, a module's attribute, or inherited from a local class. The fingerprint
reads class statements; the sandbox runs what the names hold last; the static check now refuses
the code where the two could differ, and the fingerprint follows local base classes."""

from __future__ import annotations

import time

import pytest

from archrefine.code.code import static_check
from archrefine.code.fingerprint import fingerprint
from archrefine.code.novelty_code import CodeNovelty
from archrefine.real.replies import row
from archrefine.space import KNOWN, to_source

RESNET = to_source(KNOWN["resnet"])
IMPORTS = "import torch\nimport torch.nn.functional as F\nfrom torch import nn\n\n\n"
COPY = RESNET.replace("class Net", "class R")[RESNET.index("class Net") :]  # resnet, renamed
FORWARD = RESNET[RESNET.index("    def forward") :]
DECOY = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 24, 5, padding=2)
        self.b = nn.Conv2d(24, 48, 3, stride=2)
        self.head = nn.Linear(48, 10)

    def forward(self, x):
        x = F.gelu(self.a(x))
        x = F.silu(self.b(x))
        return self.head(x.mean((2, 3)))
"""


@pytest.fixture(scope="module")
def archive() -> CodeNovelty:
    nov = CodeNovelty()
    nov.seed_with_known()
    return nov


@pytest.mark.parametrize(
    "tail",
    [
        "Net = R\n",
        "Net, other = R, 1\n",
        "for Net in [R]:\n    pass\n",
        "globals().update(Net=R)\n",
        "Net.forward = R.forward\nNet.__init__ = R.__init__\n",
        "setattr(Net, 'forward', R.forward)\n",
        "if True:\n    class Net(R):\n        pass\n",
    ],
    ids=["alias", "tuple", "for", "globals", "patched", "setattr", "in-a-block"],
)
def test_a_copy_rebound_to_net_after_a_decoy_is_rejected(tail: str, archive) -> None:
    source = IMPORTS + COPY + DECOY + tail
    # what the old code did: the fingerprint read the decoy, the copy scored as novel text;
    # the copy held beside the decoy now makes it a twin as well (test_hostile_round16.py)
    assert fingerprint(source).sha1 != fingerprint(RESNET).sha1
    assert archive.is_near_duplicate(source)
    problems = static_check(source)
    assert problems and all(p.startswith("line ") and "not allowed" in p for p in problems)
    stored = row(1, "p", f"```python\n{source}```", [])
    assert stored["status"] == "rejected" and "not allowed" in stored["reason"]


@pytest.mark.parametrize(
    "swap",
    [
        "def swap(c):\n    return R\n\n\n@swap\nclass Net(nn.Module):\n    def forward(self, x):\n"
        "        return x\n",
        "class Net(nn.Module, metaclass=M):\n    def forward(self, x):\n        return x\n",
        "class Net(nn.Module):\n    def forward(self, x):\n        return x\n\n"
        "    forward = R.forward\n",
        "class Net(nn.Module):\n    def forward(self, x):\n        return x\n\n"
        "    def forward(self, x):\n        return R.forward(self, x)\n",
        "def staticmethod(f):\n    return R.forward\n\n\nclass Net(nn.Module):\n"
        "    @staticmethod\n    def forward(self, x):\n        return x\n",
        "nn.GELU = nn.ReLU\n" + DECOY,
        "from collections import OrderedDict as Net\n" + DECOY,
    ],
    ids=["decorator", "metaclass", "class-body", "twice", "shadowed-builtin", "module", "import"],
)
def test_classes_and_methods_replaced_behind_the_readers_back_are_rejected(swap: str) -> None:
    source = IMPORTS + COPY + "\n\n" + swap
    assert any("not allowed" in p for p in static_check(source)), static_check(source)


def test_honest_idioms_still_pass() -> None:
    for seq in KNOWN.values():
        assert static_check(to_source(seq)) == []
    honest = IMPORTS + (
        "torch.backends.cudnn.benchmark = True\n\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(3, 10)\n"
        "\n"
        "    @torch.no_grad()\n"
        "    def predict(self, x):\n"
        "        return self.forward(x)\n"
        "\n"
        "    @staticmethod\n"
        "    def pool(x):\n"
        "        return x.mean((2, 3))\n"
        "\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.pool(x))\n"
        "\n"
        "\n"
        "def make():\n"
        "    class Net:\n"
        "        pass\n"
        "\n"
        "    return Net\n"
    )
    assert static_check(honest) == []


@pytest.mark.parametrize(
    "net",
    [
        "class Net(R):\n    def forward(self, x):\n        return super().forward(x)\n",
        "class Net(R):\n" + FORWARD,
        "class Net(R):\n    def __init__(self):\n        super().__init__()\n\n"
        "    def forward(self, x):\n        return R.forward(self, x)\n",
        "class Block(R):\n    pass\n\n\nclass Net(nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.body = Block()\n\n"
        "    def forward(self, x):\n        return self.body(x)\n",
    ],
    ids=["super-forward", "copied-forward", "explicit-base", "inherited-helper"],
)
def test_a_copy_inherited_from_a_local_class_is_read_as_the_copy(net: str, archive) -> None:
    source = IMPORTS + COPY + "\n\n" + net
    assert static_check(source) == []
    # the old reader saw an empty or unresolved network here: novelty 0.13-0.14, not flagged
    assert fingerprint(source).detail == fingerprint(RESNET).detail
    assert archive.is_near_duplicate(source) and archive.score(source) == 0.0


def test_a_deep_local_class_hierarchy_is_read_quickly() -> None:
    classes = "".join(
        f"class A{i}(A{i - 1}):\n    def forward(self, x):\n"
        f"        return super().forward(super().forward(x))\n\n\n"
        for i in range(1, 900)
    )
    source = (
        IMPORTS + "class A0(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.c = nn.Conv2d(3, 3, 3, padding=1)\n\n    def forward(self, x):\n"
        "        return self.c(x)\n\n\n" + classes + "class Net(A899):\n    def forward(self, x):\n"
        "        return super().forward(x)\n"
    )
    start = time.monotonic()
    stored = row(1, "p", f"```python\n{source}```", [])
    assert time.monotonic() - start < 5
    assert stored.get("fingerprint") or stored["reason"].startswith("source is too intricate")


def test_a_copy_inherited_through_many_empty_classes_is_still_the_copy(archive) -> None:
    chain = "".join(f"class R{i}({'R' if i == 1 else f'R{i - 1}'}):\n    pass\n\n\n"
                    for i in range(1, 60))  # fmt: skip
    net = "class Net(R59):\n    def forward(self, x):\n        return super().forward(x)\n"
    source = IMPORTS + COPY + "\n\n" + chain + net
    assert fingerprint(source).detail == fingerprint(RESNET).detail
    assert archive.is_near_duplicate(source)


def test_a_selected_network_padded_to_the_size_cap_is_never_shown_in_a_prompt(tmp_path) -> None:
    from archrefine.real.candidates import CandidateStore
    from archrefine.real.config import RealConfig
    from archrefine.real.loop import _references
    from archrefine.real.prompts import render_fitted

    padded = RESNET + "# " + "x" * 190_000 + "\n"  # within MAX_CODE: stored, run, selectable
    cfg = RealConfig()
    with CandidateStore(tmp_path / "c.sqlite") as store:
        big = store.add(cycle=1, code=padded, status="ok", accuracy=0.99, selected=True)
        refs = _references(store, 2, cfg)
        assert all(r.cid != big and len(r.code) <= 12_000 for r in refs)
        assert {r.name for r in refs} >= {"resnet"}  # nothing else selected: KNOWN's
        fine = store.add(cycle=1, code=RESNET, status="ok", accuracy=0.5, selected=True)
        refs = _references(store, 2, cfg)
    assert [r.cid for r in refs] == [fine]
    template = __import__("string").Template("$references")
    prompt, _ = render_fitted(template, cfg.prompt, refs, input_shape=(3, 32, 32), classes=10)
    assert len(prompt) < 5_000  # it was ~190 KB per reference shown, in every later prompt


VGG = to_source(KNOWN["vgg"])
VGG_LAYERS = [
    "nn.Conv2d(3, 32, 3, padding=1)", "nn.ReLU()", "nn.Conv2d(32, 32, 3, padding=1)", "nn.ReLU()",
    "nn.MaxPool2d(2)", "nn.Conv2d(32, 64, 3, padding=1)", "nn.ReLU()",
    "nn.Conv2d(64, 64, 3, padding=1)", "nn.ReLU()", "nn.MaxPool2d(2)", "nn.Flatten()",
    "nn.Linear(4096, 128)", "nn.ReLU()", "nn.Dropout(0.2)", "nn.Linear(128, 10)",
]  # fmt: skip


@pytest.mark.parametrize(
    "holder, loop",
    [
        ("nn.Sequential({})", "for m in self.f.children():"),
        ("nn.ModuleList([{}])", "for i, m in enumerate(self.f):"),
        ("nn.ModuleDict({{{}}})", "for m in self.f.values():"),
        ("nn.ModuleDict({{{}}})", "for i, m in enumerate(self.f.values()):"),
    ],
    ids=["children", "enumerate", "moduledict-values", "enumerate-values"],
)
def test_a_copy_run_through_a_loop_over_its_modules_is_a_near_duplicate(holder, loop, archive):
    named = holder.startswith("nn.ModuleDict")
    layers = ", ".join(f'"l{i}": {x}' if named else x for i, x in enumerate(VGG_LAYERS))
    source = IMPORTS + (
        "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        f"        self.f = {holder.format(layers)}\n\n    def forward(self, x):\n"
        f"        {loop}\n            x = m(x)\n        return x\n"
    )
    assert static_check(source) == []
    # the old reader saw `?` (and a `values`/`children` op): novelty 0.96-0.97, not flagged
    assert fingerprint(source).detail == fingerprint(VGG).detail
    assert archive.is_near_duplicate(source)


def test_the_fine_tuning_set_is_read_without_every_reply_in_the_store(tmp_path, monkeypatch):
    from archrefine.real.candidates import CandidateStore
    from archrefine.real.loop import _pairs

    with CandidateStore(tmp_path / "c.sqlite") as store:
        ids = store.add_many(
            dict(cycle=1 + i // 4, prompt=f"p{i}", response=f"r{i}" + "x" * 50_000 * (i % 2))
            for i in range(12)
        )
        store.mark_selected([ids[7], ids[2], ids[4]])
        frame = store.to_frame()
        expected = list(zip(frame[frame.selected].prompt, frame[frame.selected].response))
        # every cycle read every row: 500 replies of 1 MB (the size kept) peaked at 1.6 GB
        monkeypatch.setattr(CandidateStore, "to_frame", lambda self: pytest.fail("read all"))
        assert _pairs(store) == expected and [p for p, _ in expected] == ["p2", "p4", "p7"]


def test_long_attribute_chains_are_named_once_not_once_per_link() -> None:
    chains = "".join(f"y{i} = torch" + ".b" * 900 + "\n" for i in range(104))  # 190 KB
    net = "class Net(nn.Module):\n    def forward(self, x):\n        return x\n"
    start = time.monotonic()
    stored = row(1, "p", f"```python\n{IMPORTS}{net}{chains}```", [])
    assert time.monotonic() - start < 6  # 19.6 s: each link of a chain was named again
    assert stored.get("fingerprint") and "status" not in stored
    assert static_check(IMPORTS + net + "m = torch.hub.load('a', 'b').x.y\n") == [
        "line 9: use of 'torch.hub' is not allowed"
    ]


def test_constants_nested_deeply_are_not_counted_again_at_every_level() -> None:
    from archrefine.code.ast_helpers import literal_value

    net = "class Net(nn.Module):\n    def forward(self, x):\n        return x\n"
    nested = "".join("z = " + "[" * 190 + "]" * 190 + "\n" for _ in range(500))  # 190 KB
    start = time.monotonic()
    stored = row(1, "p", f"```python\n{IMPORTS}{net}{nested}```", [])
    assert time.monotonic() - start < 7  # 11.3 s: each level counted all the levels below
    assert stored.get("fingerprint")
    assert literal_value(__import__("ast").parse("((3, 3), [1, [2]])").body[0].value, {}) == (
        (3, 3), [1, [2]],
    )  # fmt: skip


WRAPPER = "\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"


@pytest.mark.parametrize(
    "wrapper",
    [
        WRAPPER + "        self.r = R()\n        self.s = self.r\n\n    def forward(self, x):\n"
        "        return self.s(x)\n",
        WRAPPER + "        self.r = R()\n        self.f = self.r.forward\n\n"
        "    def forward(self, x):\n        return self.f(x)\n",
        "\n\nMODEL = R()" + WRAPPER + "        self.r = MODEL\n\n    def forward(self, x):\n"
        "        return self.r(x)\n",
        "\n\nMODEL = R()" + WRAPPER + "        self.h = nn.Identity()\n\n"
        "    def forward(self, x):\n        return MODEL(x)\n",
    ],
    ids=["alias", "bound-forward", "module-instance", "module-instance-called"],
)
def test_a_copy_behind_a_thin_wrapper_is_a_near_duplicate(wrapper: str, archive) -> None:
    source = IMPORTS + COPY + wrapper
    assert static_check(source) == []
    # the old reader saw an empty forward: novelty 0.19-0.20, not flagged
    assert fingerprint(source).detail == fingerprint(RESNET).detail
    assert archive.is_near_duplicate(source)


def test_a_property_forward_is_rejected_and_module_instances_cannot_blow_up() -> None:
    prop = IMPORTS + COPY + WRAPPER + "        self.r = R()\n\n    @property\n"
    assert static_check(prop + "    def forward(self):\n        return self.r\n") == [
        "line 40: a decorator on method 'forward' is not allowed"
    ]
    doubling = "K0 = nn.Conv2d(3, 3, 3)\n" + "".join(
        f"K{i} = nn.Sequential(K{i - 1}, K{i - 1})\n" for i in range(1, 40)
    )  # 2**39 layers if each name were read afresh
    net = WRAPPER + "        self.a = K39\n\n    def forward(self, x):\n"
    net += "        return K39(self.a(x))\n"
    start = time.monotonic()
    stored = row(1, "p", f"```python\n{IMPORTS}{doubling}{net}```", [])
    assert time.monotonic() - start < 2 and stored["status"] == "rejected"
    cyclic = "A = nn.Sequential(B)\nB = nn.Sequential(A)\n" + net.replace("K39", "A")
    assert row(1, "p", f"```python\n{IMPORTS}{cyclic}```", []).get("fingerprint")
