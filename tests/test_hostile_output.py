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
