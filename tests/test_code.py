"""Reading model-written code without running it: extraction, static checks, fingerprints."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from archrefine.code.code import CodeError, extract_code, static_check
from archrefine.code.fingerprint import Fingerprint, fingerprint
from archrefine.code.tokens import to_tokens

try:
    from archrefine import space
except ImportError:  # being written alongside; the tests that need it skip
    space = None
needs_space = pytest.mark.skipif(space is None, reason="archrefine.space is not importable yet")

RESNETISH = '''\
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity skip."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        identity = x
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return F.relu(out)


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True)
        )
        self.block = BasicBlock(32)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.block(x)
        x = self.pool(x)
        x = x.view(x.size(0), -1)
        return self.fc(x)
'''

SEQUENTIAL = """\
import torch.nn as nn
class Net(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Flatten(), nn.Linear(3072, 10))
"""


def rename(source: str, names: dict[str, str]) -> str:
    for old, new in names.items():
        source = re.sub(rf"\b{old}\b", new, source)
    return source


def names_of(tokens: list[int] | None) -> list[str] | None:
    return None if tokens is None else [space.VOCAB[t] for t in tokens]


# ---- extract_code ------------------------------------------------------------------------------


def test_extract_prefers_the_python_block() -> None:
    response = "Plan:\n```\npip install torch\n```\nCode:\n```python\nx = 1\n```\n```py\ny=2\n```"
    assert extract_code(response) == "x = 1\n"


def test_extract_falls_back_to_any_block_then_to_bare_code() -> None:
    assert extract_code("See:\n```text\nclass Net: pass\n```\nbye") == "class Net: pass\n"
    assert extract_code("import torch\nclass Net: pass\n") == "import torch\nclass Net: pass\n"


def test_extract_takes_a_block_cut_off_by_the_token_limit() -> None:
    assert (
        extract_code("Sure!\n```python\nimport torch\nclass Net(") == "import torch\nclass Net(\n"
    )


def test_extract_dedents_a_block_nested_in_a_list() -> None:
    response = "1. the net:\n   ```python\n   x = 1\n   if x:\n       y = 2\n   ```\n"
    assert extract_code(response) == "x = 1\nif x:\n    y = 2\n"


@pytest.mark.parametrize(
    ("response", "message"),
    [
        ("", "empty response"),
        ("   \n", "empty response"),
        ("I cannot write that network, sorry.", r"no ``` code block, and the text is not Py"),
        ("```python\n\n```", "the ```python block is empty"),
    ],
)  # fmt: skip
def test_extract_fails_with_a_one_line_reason(response: str, message: str) -> None:
    with pytest.raises(CodeError, match=message) as err:
        extract_code(response)
    assert "\n" not in str(err.value)


# ---- static_check ------------------------------------------------------------------------------


def test_clean_nets_have_no_problems() -> None:
    assert static_check(RESNETISH) == []
    assert static_check(SEQUENTIAL) == []  # forward inherited from nn.Sequential


@needs_space
def test_every_known_architecture_passes() -> None:
    for name, seq in space.KNOWN.items():
        assert static_check(space.to_source(seq)) == [], name


HOSTILE = [
    ("import os", "line 1: import of 'os' is not allowed"),
    ("from subprocess import run", "line 1: import of 'subprocess' is not allowed"),
    ("import socket as s", "line 1: import of 'socket' is not allowed"),
    ("import numpy", "line 1: import of 'numpy' is not allowed"),
    ("from . import helpers", "line 1: relative imports are not allowed"),
    ("x = eval('1 + 1')", "line 1: use of 'eval' is not allowed"),
    ("exec('y = 2')", "line 1: use of 'exec' is not allowed"),
    ("c = compile('1', 'f', 'eval')", "line 1: use of 'compile' is not allowed"),
    ("data = open('/etc/passwd').read()", "line 1: use of 'open' is not allowed"),
    ("m = __import__('os')", "line 1: use of '__import__' is not allowed"),
    ("b = __builtins__", "line 1: use of '__builtins__' is not allowed"),
    ("k = ().__class__.__bases__[0].__subclasses__()", "line 1: access to attribute '__bases__'"),
    ("g = getattr(len, '__globals__')", "line 1: string '__globals__' is not allowed"),
    ("m = torch.hub.load('a', 'b')", "line 1: use of 'torch.hub' is not allowed"),
    ("w = torch.load('weights.pt')", "line 1: use of 'torch.load' is not allowed"),
    ("import torch.hub", "line 1: import of 'torch.hub' is not allowed"),
    ("from torch import hub, nn", "line 1: import of 'torch.hub' is not allowed"),
    ("from torch.hub import load", "line 1: import of 'torch.hub' is not allowed"),
    ("s = sys.modules", "line 1: use of 'sys' is not allowed"),
]


@pytest.mark.parametrize(("line", "problem"), HOSTILE)
def test_hostile_looking_code_is_flagged_with_its_line(line: str, problem: str) -> None:
    source = f"{line}\n{SEQUENTIAL}"
    problems = static_check(source)
    assert any(p.startswith(problem) for p in problems), problems
    assert all("\n" not in p for p in problems)
    assert static_check(SEQUENTIAL) == []  # the rest of the source is not what was flagged


def test_allowed_imports_is_a_parameter_but_os_never_is() -> None:
    source = f"import numpy as np\nimport os\n{SEQUENTIAL}"
    assert static_check(source, allowed_imports=("torch", "numpy", "os")) == [
        "line 2: import of 'os' is not allowed"
    ]
    assert "line 1: import of 'numpy' is not allowed" in static_check(source)
    assert static_check("import torch.nn.functional as F\n" + SEQUENTIAL) == []
    assert (
        static_check("from torch import nn, optim\nimport torch.nn.functional\n" + SEQUENTIAL) == []
    )
    assert static_check("m = torch.hub.load('a', 'b')\n" + SEQUENTIAL) == [
        "line 1: use of 'torch.hub' is not allowed"  # once, not once per attribute
    ]


def test_syntax_errors_and_missing_pieces_are_reported() -> None:
    assert static_check("import torch\nclass Net(:\n") == ["line 2: invalid syntax"]
    assert static_check("import torch\n") == ["no top-level class Net"]
    no_forward = "import torch.nn as nn\nclass Net(nn.Module):\n    def __init__(self): pass\n"
    assert static_check(no_forward) == ["class Net has no forward method"]
    nested = "def make():\n    class Net:\n        def forward(self, x): return x\n"
    assert static_check(nested) == ["no top-level class Net"]


def test_common_harmless_idioms_pass() -> None:
    source = (
        f"{SEQUENTIAL}\n__all__ = ['Net']\n\nif __name__ == '__main__':\n"
        "    import torch\n    print(Net()(torch.randn(2, 3, 32, 32)).shape, type(Net).__name__)\n"
    )
    assert static_check(source) == []


def test_problems_come_sorted_by_line_and_once_each() -> None:
    source = f"{SEQUENTIAL}x = eval('1')\ny = eval('2')\nimport os\n"
    assert static_check(source) == [
        "line 5: use of 'eval' is not allowed",
        "line 6: use of 'eval' is not allowed",
        "line 7: import of 'os' is not allowed",
    ]


# ---- fingerprint -------------------------------------------------------------------------------


def test_fingerprint_reads_layers_and_forward_in_order() -> None:
    fp = fingerprint(RESNETISH)
    conv = "Conv2d(o=32,k=3,s=1,p=1)"
    assert fp.layers == (conv, "BatchNorm", "ReLU", conv, "BatchNorm", conv, "BatchNorm",
                         "GlobalAvgPool", "Linear(o=10)")  # fmt: skip
    assert fp.forward == (conv, "BatchNorm", "ReLU", "Save", conv, "BatchNorm", "ReLU", conv,
                          "BatchNorm", "Add", "ReLU", "GlobalAvgPool", "Flatten",
                          "Linear(o=10)")  # fmt: skip
    assert fp.canonical == f"layers={';'.join(fp.layers)}|forward={';'.join(fp.forward)}"
    assert fp.sha1 == hashlib.sha1(fp.canonical.encode()).hexdigest()
    assert str(fp) == fp.canonical


def test_renaming_and_reformatting_keep_the_fingerprint() -> None:
    renamed = rename(
        RESNETISH,
        {"identity": "shortcut", "out": "h", "x": "inp", "conv1": "c_a", "conv2": "c_b",
         "bn1": "n_a", "bn2": "n_b", "stem": "features", "block": "res", "fc": "classifier",
         "BasicBlock": "ResidualUnit", "channels": "width", "num_classes": "n_out"},
    )  # fmt: skip
    renamed = renamed.replace('"""Two 3x3 convolutions with an identity skip."""', "# a block")
    assert renamed != RESNETISH
    assert fingerprint(renamed) == fingerprint(RESNETISH)
    assert fingerprint(renamed).sha1 == fingerprint(RESNETISH).sha1


def test_a_structural_change_changes_the_fingerprint() -> None:
    wider = RESNETISH.replace("nn.Conv2d(3, 32,", "nn.Conv2d(3, 64,")
    gelu = RESNETISH.replace("return F.relu(out)", "return F.gelu(out)")
    digests = {fingerprint(s).sha1 for s in (RESNETISH, wider, gelu)}
    assert len(digests) == 3


def test_module_and_functional_forms_give_the_same_forward() -> None:
    functional = """\
import torch, torch.nn as nn, torch.nn.functional as F
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1)
        self.fc = nn.Linear(16, 10)
    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))
"""
    modules = """\
from torch import nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, kernel_size=(3, 3), padding=1), nn.ReLU(),
                                  nn.MaxPool2d(kernel_size=2, stride=2), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(16, 10))
    def forward(self, x):
        return self.body(x)
"""
    assert fingerprint(functional).forward == fingerprint(modules).forward
    assert fingerprint(functional).layers != fingerprint(modules).layers  # ReLU is a module


def test_star_imports_and_huge_loops_are_read_safely() -> None:
    source = """\
from torch.nn import *
class Net(Module):
    def __init__(self):
        super().__init__()
        self.c = Conv2d(3, 8, 3)
        for _ in range(10**12 if True else 0):
            self.extra = Linear(8, 8)
        for _ in range(1_000_000_000_000):
            self.more = ReLU()
    def forward(self, x):
        return self.c(x)
"""
    assert fingerprint(source) == Fingerprint(
        ("Conv2d(o=8,k=3,s=1,p=0)", "Linear(o=8)", "ReLU"), ("Conv2d(o=8,k=3,s=1,p=0)",)
    )


def test_weight_initialisation_is_not_a_layer() -> None:
    source = """\
import torch.nn as nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3072, 10)
        nn.init.kaiming_normal_(self.fc.weight)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
    def forward(self, x):
        return self.fc(x.flatten(1))
"""
    assert fingerprint(source) == Fingerprint(("Linear(o=10)",), ("Flatten", "Linear(o=10)"))


def test_fingerprint_executes_nothing(tmp_path) -> None:
    marker = tmp_path / "ran"
    source = f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit(3)\n{SEQUENTIAL}"
    fp = fingerprint(source)
    assert fp.forward == ("Flatten", "Linear(o=10)")
    assert not marker.exists()


def test_fingerprint_of_unreadable_code_fails_with_one_line() -> None:
    with pytest.raises(CodeError, match="^line 1: "):
        fingerprint("class Net(:")
    with pytest.raises(CodeError, match="^no top-level class Net$"):
        fingerprint("import torch\n")


def test_loops_lists_and_builder_methods_are_followed() -> None:
    source = """\
import torch
import torch.nn as nn
WIDTH = 16
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        layers = []
        c = 3
        for out in [WIDTH, 2 * WIDTH]:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU()]
            c = out
        self.features = nn.Sequential(*layers)
        self.blocks = nn.ModuleList()
        for _ in range(2):
            self.blocks.append(self._make(32))
        self.head = nn.Linear(32, 10)
    def _make(self, c):
        return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c))
    def forward(self, x):
        x = self.features(x)
        for blk in self.blocks:
            x = torch.relu(blk(x))
        x = x.mean(dim=(-2, -1))
        return torch.log_softmax(self.head(x), dim=1)
"""
    dw = ("Conv2d(o=32,k=3,s=1,p=1,g=dw)", "BatchNorm", "ReLU")
    assert fingerprint(source).forward == (
        "Conv2d(o=16,k=3,s=1,p=1)", "ReLU", "Conv2d(o=32,k=3,s=1,p=1)", "ReLU", *dw, *dw,
        "GlobalAvgPool", "Linear(o=10)", "LogSoftmax",
    )  # fmt: skip
    if space is not None:  # the log-softmax is output normalisation: no token
        assert names_of(to_tokens(fingerprint(source))) == [
            "conv3_16", "relu", "conv3_32", "relu", "dwconv3", "batchnorm", "relu",
            "dwconv3", "batchnorm", "relu", "gap", "head",
        ]  # fmt: skip


def test_arithmetic_and_default_arguments_are_evaluated() -> None:
    source = """\
import torch.nn as nn
HIDDEN = 64
class Block(nn.Module):
    def __init__(self, cin, cout, k=3):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2)
    def forward(self, x):
        return self.conv(x)
class Net(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.a = Block(3, HIDDEN // 2)
        self.b = Block(HIDDEN // 2, HIDDEN, k=5)
        self.fc = nn.Linear(HIDDEN * 8 * 8, classes)
    def forward(self, x):
        return self.fc(self.b(self.a(x)).flatten(1))
"""
    assert fingerprint(source).forward == (
        "Conv2d(o=32,k=3,s=1,p=1)", "Conv2d(o=64,k=5,s=1,p=2)", "Flatten", "Linear(o=10)",
    )  # fmt: skip


def test_pathological_sources_fail_cleanly() -> None:
    assert static_check("x = " + "1 + " * 5000 + "1") == ["source is nested too deeply to read"]
    assert static_check("x = 1\0") == ["source code string cannot contain null bytes"]
    with pytest.raises(CodeError, match="nested too deeply"):
        fingerprint("class Net:\n    x = " + "1 + " * 5000 + "1\n")


# ---- to_tokens ---------------------------------------------------------------------------------


@needs_space
def test_known_architectures_map_back_to_their_sequences() -> None:
    for name, seq in space.KNOWN.items():
        assert to_tokens(fingerprint(space.to_source(seq))) == list(space.canonical(seq)), name


def _sepconv_form(names: list[str]) -> list[str]:
    """dwconv3 then conv1_64 builds exactly the network sepconv3_64 builds."""
    out: list[str] = []
    for n in names:
        if n == "conv1_64" and out and out[-1] == "dwconv3":
            out[-1] = "sepconv3_64"
        else:
            out.append(n)
    return out


@needs_space
def test_random_valid_sequences_map_back_to_the_same_network() -> None:
    rng = np.random.default_rng(5)
    seqs = np.repeat(space.KNOWN_ARRAY, 40, axis=0)
    for _ in range(2):  # two random substitutions per sequence
        rows = np.arange(len(seqs))
        seqs[rows, rng.integers(0, space.LENGTH, len(seqs))] = rng.integers(0, 30, len(seqs))
    valid = seqs[space.is_valid(seqs)]
    assert len(valid) >= 150
    for seq in valid[:150]:
        expected = _sepconv_form([space.VOCAB[t] for t in space.canonical(seq)])
        assert names_of(to_tokens(fingerprint(space.to_source(seq)))) == expected


@needs_space
def test_resnet_written_by_hand_maps_to_the_grounded_resnet_shape() -> None:
    assert names_of(to_tokens(fingerprint(RESNETISH))) == [
        "conv3_32", "batchnorm", "relu", "res_open", "conv3_32", "batchnorm", "relu",
        "conv3_32", "batchnorm", "res_close", "relu", "gap", "flatten", "head",
    ]  # fmt: skip


@needs_space
def test_ops_without_a_counterpart_or_too_long_give_none() -> None:
    lstm = SEQUENTIAL.replace("nn.Flatten(), ", "nn.Flatten(), nn.Upsample(scale_factor=2), ")
    assert to_tokens(fingerprint(lstm)) is None
    deep = SEQUENTIAL.replace("nn.Flatten(), ", "nn.Flatten(), " + "nn.ReLU(), " * 20)
    assert to_tokens(fingerprint(deep)) is None
    assert to_tokens(Fingerprint((), ())) is None
    assert names_of(to_tokens(fingerprint(SEQUENTIAL))) == ["flatten", "head"]
