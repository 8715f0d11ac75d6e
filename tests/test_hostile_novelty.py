"""A candidate cannot forge its novelty from the code text: a copy of a known network padded
with dead code (ops under `if False:`, after `return`, in an empty loop, in a never-called
nested function), identity ops (`x.view(x.shape)`, `nn.Identity()`) or a rewrite (Sequential
for explicit calls, renamed attributes) scored 0.71-0.86 novelty and passed the near-duplicate
filter, so it was trained, could be selected and fine-tuned on. Its structure now reads the
same as the original's, and a structural twin is a near duplicate (novelty 0)."""

from __future__ import annotations

import pytest

pytest.importorskip("datasketch")

from archrefine.code.fingerprint import fingerprint  # noqa: E402
from archrefine.code.novelty_code import CodeNovelty, structure  # noqa: E402
from archrefine.space import KNOWN, to_source  # noqa: E402

BASE = to_source(KNOWN["resnet"])
RET = "        return x\n"
PAD = "".join(f"            x = torch.tanh(x) + {i}\n            x = x.pad{i}(dim={i})\n"
              for i in range(40))  # fmt: skip


def _sub(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new, 1)


DEAD = {
    "if False": _sub(RET, "        if False:\n" + PAD + RET),
    "if not 1": _sub(RET, "        if not 1:\n" + PAD + "        else:\n    " + RET),
    "while 0": _sub(RET, "        while 0:\n" + PAD + RET),
    "after return": BASE + PAD.replace("            ", "        "),
    "raise first": _sub(
        RET,
        "        try:\n            raise ValueError\n"
        + PAD
        + "        except ValueError:\n            pass\n"
        + RET,
    ),  # fmt: skip
    "empty loop": _sub(RET, "        for _ in range(0):\n" + PAD + RET),
    "empty comprehension": _sub(RET, "        _ = [torch.tanh(x).pad(3) for _ in []]\n" + RET),
    "nested def": _sub(RET, "        def unused(x):\n" + PAD + "            return x\n" + RET),
    "if-expression": _sub(RET, "        x = x.pad9(1) if 0 else x\n" + RET),
    "identity ops": _sub(
        RET,
        "".join(
            "        x = nn.Identity()(x.view(x.shape).contiguous() * 1 + 0)\n"
            f"        x = x.reshape(*x.size()).clone()\n        x = x.view_as(x)  # {i}\n"
            for i in range(20)
        )
        + RET,
    ),
    "dead __init__ branch": _sub(
        "        self.head = nn.Linear(32, 10)\n",
        "        self.head = nn.Linear(32, 10)\n        if False:\n"
        "            self.conv2 = nn.Conv2d(32, 999, kernel_size=7)\n",
    ),
}
SEQUENTIAL = """import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32))
        self.act = nn.ReLU()
        self.fc = nn.Linear(32, 10)

    def forward(self, inp):
        h = self.stem(inp)
        keep = h
        h = self.body(h)
        h = self.act(h + keep)
        return self.fc(h.mean(dim=(2, 3)))
"""


@pytest.mark.parametrize("trick", sorted(DEAD))
def test_dead_code_and_identity_ops_do_not_enter_the_forward_ops(trick: str) -> None:
    assert fingerprint(DEAD[trick]).forward == fingerprint(BASE).forward


@pytest.mark.parametrize("trick", sorted(DEAD))
def test_a_padded_copy_of_a_known_net_is_a_near_duplicate(trick: str) -> None:
    nov = CodeNovelty()
    nov.seed_with_known()
    assert nov.score(DEAD[trick]) == 0.0  # before: 0.20-0.84
    assert "known:resnet" in nov.near_duplicates(DEAD[trick])


def test_a_rewrite_of_the_same_network_is_a_near_duplicate_of_it() -> None:
    nov = CodeNovelty()
    nov.add("parent", BASE)
    assert nov.score(SEQUENTIAL) == 0.0 and nov.near_duplicates(SEQUENTIAL) == ["parent"]


def test_without_twins_the_text_alone_is_judged() -> None:
    """`novelty.twins = false` (a plain MinHash–Jaccard filter, as in Khalid et al.): the
    rewrite is judged by its text, which shares little with the parent's."""
    nov = CodeNovelty(twins=False)
    nov.add("parent", BASE)
    assert nov.score(SEQUENTIAL) > 0.5 and nov.near_duplicates(SEQUENTIAL) == []
    assert nov.score(BASE) == 0.0  # the same text is still a duplicate


def test_different_networks_and_thin_readings_are_not_twins() -> None:
    keys = [structure(to_source(seq)) for seq in KNOWN.values()]
    assert None not in keys and len(set(keys)) == len(keys)
    tweak = BASE.replace("nn.Conv2d(32, 32, kernel_size=3, padding=1)",
                         "nn.Conv2d(32, 32, kernel_size=3, padding=2, dilation=2)", 1)  # fmt: skip
    assert structure(tweak) != structure(BASE)  # dilation is read for the twin check
    unread = (
        "import torch\nclass Net(torch.nn.Module):\n    def forward(self, x):\n        return x\n"
    )
    assert structure(unread) is None  # no Conv2d/Linear: no key, so no false twins


def test_the_loop_flags_a_padded_copy_and_never_selects_it(tmp_path, monkeypatch) -> None:
    pytest.importorskip("torch")
    from test_loop_faults import FakePool, ScriptedGenerator, cands, config, fake

    from archrefine.real import run

    answers = [f"```python\n{DEAD['if False']}```\n", f"```python\n{SEQUENTIAL}```\n"]
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    fake(monkeypatch, FakePool())
    settings = {"loop.cycles": 1, "loop.population": 2, "loop.top_k": 2}
    run(config(**settings), tmp_path / "run", generator=ScriptedGenerator(answers))
    table = cands(tmp_path / "run")
    assert list(table.near_duplicate) == [True, True] and not table.selected.any()
    assert list(table.novelty) == [0.0, 0.0]
