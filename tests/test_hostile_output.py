"""Hostile code read in the loop's own process: what a few kilobytes of model-written source
could make reading it cost (time, memory) before the bounds these tests show.

Each attack is a source the static check lets through (or a reply stored as `rejected`), read by
`fingerprint` (every reply, in `replies.row`; again for the metrics and the archive) or by the
archive's novelty sketches. A regression that hangs runs in a subprocess with a timeout, so it
fails here instead of wedging the suite.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from archrefine.code.fingerprint import fingerprint

NESTED = """
from archrefine.real.replies import row

CHAIN = "K0 = (1, 2)\\n" + "".join(f"K{i} = (K{i - 1}, K{i - 1})\\n" for i in range(1, 60))
BLOCK = (
    "class B(nn.Module):\\n    def __init__(self, k):\\n        super().__init__()\\n"
    "    def forward(self, x):\\n        return x\\n"
)
INIT = "    def __init__(self):\\n        super().__init__()\\n        self.b = {}\\n"
USES = {
    "mean": "    def forward(self, x):\\n        return x.mean(dim=K59)\\n",
    "conv": INIT.format("nn.Conv2d(1, 1, K59)") + "    def forward(self, x):\\n"
    "        return self.b(x)\\n",
    "local": INIT.format("B(K59)") + "    def forward(self, x):\\n        return self.b(x)\\n",
}
for use in USES.values():
    code = "import torch.nn as nn\\n" + CHAIN + BLOCK + "class Net(nn.Module):\\n" + use
    fields = row(1, "prompt", "```python\\n" + code + "```\\n", [])
    print(fields.get("status"), len(code) < 2000)
"""


def test_named_constants_nested_in_each_other_cannot_hang_the_loop() -> None:
    """`K1 = (K0, K0)` ... `K59 = (K58, K58)` is 1.5 KB of source but 2**59 items: the
    fingerprint (read for every reply) printed it into an op name, hashed it for `x.mean(dim=)`
    or printed it into a local class's cache key, and never finished. A constant now holds at
    most `MAX_LITERAL` scalars; a larger one reads as unknown (`?`)."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", NESTED], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout.split() == ["None", "True"] * 3, proc.stdout  # candidates, read at once
    assert time.monotonic() - started < 20


HEAD = "import torch.nn as nn\n"


def test_a_long_name_or_constant_repeated_cannot_bloat_the_fingerprint() -> None:
    """The reading budget counts ops, not their length: a 20,000-character method name called
    from 2,000 lines, or a 20,000-character string named in 1,000 layers, made a canonical
    form of 40 MB (a 100,000-character one, 500 MB to 1 GB and 49 s). Ops are now cut at
    `MAX_OP` characters and long constants read as unknown."""
    name = "a" * 20_000
    called = HEAD + "class Net(nn.Module):\n    def h(self, x):\n        return x." + name
    called += "()\n    def forward(self, x):\n" + "        x = self.h(x)\n" * 2000
    called += "        return x\n"
    named = HEAD + "K = '" + "k" * 20_000 + "'\nclass Net(nn.Module):\n"
    named += "    def __init__(self):\n        super().__init__()\n        self.a = nn.Sequential("
    named += "nn.Conv2d(1, 1, K)," * 1000 + ")\n"
    named += "    def forward(self, x):\n        return self.a(x)\n"
    for source in (called, named):
        started = time.monotonic()
        fp = fingerprint(source)
        assert len(fp.canonical) < 1_000_000
        assert time.monotonic() - started < 3
    assert fingerprint(named).layers[0] == "Conv2d(o=1,k=?,s=1,p=0)"


def test_short_constants_still_read_as_before() -> None:
    """The bound leaves what networks use: kernel pairs, loops over up to 32 widths, short
    string options."""
    source = HEAD + (
        f"W = [{', '.join(['16, 32'] * 16)}]\nclass Net(nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.l = nn.ModuleList()\n"
        "        for w in W:\n            self.l.append(nn.Conv2d(3, w, (3, 3), padding='same'))\n"
        "    def forward(self, x):\n        return x.mean(dim=(2, 3))\n"
    )
    fp = fingerprint(source)
    assert fp.layers[:2] == ("Conv2d(o=16,k=3,s=1,p=same)", "Conv2d(o=32,k=3,s=1,p=same)")
    assert len(fp.layers) == 32 and fp.forward == ("GlobalAvgPool",)


def test_code_too_long_to_read_is_never_read_by_the_archive(monkeypatch) -> None:
    """A reply whose code is past `MAX_CODE` is stored `rejected` without being read; the
    archive (which takes in every earlier candidate by default, `loop.archive = "all"`) then
    sketched and fingerprinted it anyway: ~14 s and 750 MB per 1 MB block, at the end of its
    cycle and again on every resume."""
    pytest.importorskip("datasketch")
    pytest.importorskip("torch")
    from test_loop_faults import config

    import archrefine.real.loop as loop
    from archrefine.real.replies import MAX_CODE, row

    code = "import torch.nn as nn\nclass Net(nn.Module):\n    pass\n" + "x = 1\n" * MAX_CODE[1]
    fields = row(1, "prompt", f"```python\n{code}```\n", [])
    assert fields["status"] == "rejected" and "limit" in fields["reason"]
    read: list[int] = []
    monkeypatch.setattr(loop, "mapped", lambda source: read.append(len(source)))
    archive = loop.Archive(config(**{"novelty.seed_known": False}))
    monkeypatch.setattr(archive.codes, "add", lambda key, source: read.append(len(source)))
    small = "import torch.nn as nn\nclass Net(nn.Module):\n    pass\n"
    rows = [dict(id=1, code=fields["code"], status="rejected", selected=False),
            dict(id=2, code=small, status="rejected", selected=False)]  # fmt: skip
    archive.admit(rows)
    assert read == [len(small)] * 2  # the short one is still taken in


def test_a_long_attribute_chain_is_rejected_not_crashed(caplog) -> None:
    """`x.a.a.a...` of 1,500 links parses, but naming it recursed past Python's limit inside
    `static_check`: a RecursionError that only the loop's last safety net caught (the candidate
    `crashed`, with a warning about an unexpected route). It is now rejected as too deep."""
    from archrefine.real.replies import row

    code = HEAD + "class Net(nn.Module):\n    def forward(self, x):\n"
    code += "        return x" + ".a" * 1500 + "\n"
    with caplog.at_level("WARNING", logger="archrefine.real"):
        fields = row(1, "prompt", f"```python\n{code}```\n", [])
    assert fields["status"] == "rejected", fields["reason"]
    assert fields["reason"] == "source is nested too deeply to read"
    assert not caplog.records


def _nets(tag: str) -> list[str]:
    """Three replies with networks far enough apart that no one is a near duplicate."""
    bodies = [
        "nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)",
        "nn.Flatten(), nn.Linear(3072, 16), nn.Tanh(), nn.Linear(16, 10)",
        "nn.AvgPool2d(4), nn.Conv2d(3, 6, 1), nn.SiLU(), nn.Flatten(), nn.Linear(384, 32), "
        "nn.Dropout(0.1), nn.Linear(32, 10)",
    ]
    return [
        f"```python\nimport torch\nfrom torch import nn\n\n\nclass Net(nn.Module):  # {tag}{i}\n"
        f"    def __init__(self):\n        super().__init__()\n"
        f"        self.body = nn.Sequential({body})\n\n"
        "    def forward(self, x):\n        return self.body(x)\n```\n"
        for i, body in enumerate(bodies)
    ]


def test_each_candidate_is_fingerprinted_and_sketched_once_per_process(
    tmp_path, monkeypatch
) -> None:
    """A block just under `MAX_CODE` costs seconds to read, and one cycle read each candidate's
    code 3 times for its fingerprint (its row, the metrics, the archive) and 6 times for its
    novelty sketch (the filter's four looks, the diversity, the archive): ~15 s of the loop's
    process per candidate. Both readers now remember each source's result (cachetools)."""
    pytest.importorskip("datasketch")
    pytest.importorskip("torch")
    from test_loop_faults import FakePool, ScriptedGenerator, config, fake

    import archrefine.code.fingerprint as fp
    import archrefine.code.novelty_code as nc
    from archrefine.real import run

    tag = "read once, candidate "  # sources no other test has read in this process
    reads: list[tuple[str, str]] = []
    for module, name in ((fp, "parse_source"), (nc, "code_tokens")):

        def counted(source: str, _read=getattr(module, name), _name=name) -> object:
            if tag in source:
                reads.append((_name, source[source.index(tag) + len(tag)]))
            return _read(source)

        monkeypatch.setattr(module, name, counted)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    fake(monkeypatch, FakePool())
    settings = {"loop.cycles": 1, "loop.population": 3, "loop.top_k": 3}
    run(config(**settings), tmp_path / "run", generator=ScriptedGenerator(_nets(tag)))
    once = [(reader, i) for reader in ("code_tokens", "parse_source") for i in "012"]
    assert sorted(reads) == once  # before: parse_source 3 times each, code_tokens 5 or 6 times


def test_remembered_fingerprints_and_sketches_are_the_same_and_cannot_be_changed() -> None:
    """What is remembered is shared by every later caller: a fingerprint is frozen, and each
    sketch is a new MinHash whose values a caller may change without touching the next one."""
    pytest.importorskip("datasketch")
    from archrefine.code.code import extract_code
    from archrefine.code.novelty_code import CodeNovelty

    source = extract_code(_nets("shared, candidate ")[0])
    assert fingerprint(source) is fingerprint(source)
    novelty = CodeNovelty()
    first = novelty.sketch(source)
    before = list(first.hashvalues)
    first.hashvalues[:] = 0
    assert list(novelty.sketch(source).hashvalues) == before
    assert list(CodeNovelty(seed=2).sketch(source).hashvalues) != before  # the setting counts


def test_a_reason_that_quotes_the_code_is_one_short_line() -> None:
    """`import <a 190,000-character name>` was rejected with a 190,000-character reason (the
    static check quotes the name), as was an empty block whose tag is that long: a candidate's
    reason is one line of at most 200 characters, whatever it quotes."""
    from archrefine.real.replies import row

    name = "a" * 190_000
    replies = {
        "import": f"```python\nimport {name}\nclass Net:\n    pass\n```\n",
        "string": f"```python\nx = '__{name}__'\nclass Net:\n    pass\n```\n",
        "tag": f"```{name}\n\n```\n",
    }
    for what, reply in replies.items():
        fields = row(1, "prompt", reply, [])
        assert fields["status"] in ("rejected", "no_code"), what
        assert len(fields["reason"]) <= 200 and fields["reason"].endswith("..."), what
    assert row(1, "prompt", replies["import"], [])["reason"].startswith("line 1: import of 'aaa")


def test_a_byte_order_mark_or_invisible_character_before_a_fence_is_nothing() -> None:
    """A reply that began with a byte-order mark (U+FEFF) before its ``` lost its code: the
    opening fence was not at a line start, the closing one was read as an empty opening one,
    and the candidate was `no_code`. Invisible format characters before a fence (a BOM, a
    zero-width space, a direction mark) now count as indentation, and a leading BOM as nothing."""
    from archrefine.code.code import extract_code
    from archrefine.real.replies import row

    reply = _nets("bom, candidate ")[0]
    code = extract_code(reply)
    for hostile in (
        "\ufeff" + reply,
        "Here it is:\n\u200b" + reply.replace("\n```\n", "\n\u200b```\n"),
        "\ufeff  \u200e" + reply.replace("\n```\n", "\n\u2060```\n"),
        "\ufeff" + code,  # no fence: the text itself is the code
    ):
        assert extract_code(hostile) == code, repr(hostile[:20])
        fields = row(1, "prompt", hostile, [])
        assert fields["code"] == code and "status" not in fields, fields.get("reason")
