"""The real loop's last lines of defence: a route no explicit check anticipated (an exception
while handling one candidate, a refine that fails on the selection, a reply too big to parse)
costs only that candidate or that refinement, is logged, and leaves a run that resumes to the
same result. The sandbox's side is checked with outputs and parameter counts it must not trust.

Most tests use `FakePool` and `ScriptedGenerator` (tests/test_loop_faults.py): no sandbox runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("datasketch")

from test_loop_faults import FakePool, ScriptedGenerator, cands, config, fake  # noqa: E402

from archrefine.core.store import StoreError  # noqa: E402
from archrefine.real import completed_cycles, run  # noqa: E402
from archrefine.real.candidates import CandidateStore  # noqa: E402
from archrefine.real.replies import MAX_RESPONSE, code_or_error  # noqa: E402
from archrefine.real.text import GeneratorUnavailable  # noqa: E402

pytestmark = [pytest.mark.torch]

LAYERS = [  # six networks far enough apart that none is a near duplicate of another
    "nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)",
    "nn.Flatten(), nn.Linear(3072, 16), nn.Tanh(), nn.Linear(16, 10)",
    "nn.Conv2d(3, 8, 5, stride=2), nn.BatchNorm2d(8), nn.GELU(), nn.MaxPool2d(2), nn.Flatten(),"
    " nn.LazyLinear(10)",
    "nn.AvgPool2d(4), nn.Conv2d(3, 6, 1), nn.SiLU(), nn.Flatten(), nn.Linear(384, 32), "
    "nn.Dropout(0.1), nn.Linear(32, 10)",
    "nn.Conv2d(3, 5, 7, padding=3), nn.LeakyReLU(0.2), nn.Conv2d(5, 5, 3, groups=5), "
    "nn.AdaptiveMaxPool2d(2), nn.Flatten(), nn.Linear(20, 10)",
    "nn.Flatten(), nn.LayerNorm(3072), nn.Linear(3072, 10), nn.Softmax(dim=1)",
]


def net(i: int, tag: str = "") -> str:
    code = (
        f"import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):  # {tag}\n"
        "    def __init__(self):\n        super().__init__()\n"
        f"        self.body = nn.Sequential({LAYERS[i]})\n\n"
        "    def forward(self, x):\n        return self.body(x)\n"
    )
    return f"```python\n{code}```\n"


@pytest.fixture(autouse=True, scope="module")
def _own_key(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg")))
        yield


def small(**extra) -> object:
    return config(**{"loop.population": 3, "loop.top_k": 3, **extra})


class Learner(ScriptedGenerator):
    """Learns by counting the pairs it refined on (saved and loaded with the cycle). A pair
    holding POISON makes refine raise after the count moved, as a failure halfway through an
    epoch leaves optimizer steps taken; `broken` makes every refine raise (a bug)."""

    def __init__(self, answers, *, broken=False, bad_load=False, fail_after=None) -> None:
        super().__init__(answers, fail_after)
        self.broken, self.bad_load, self.learned, self.refines = broken, bad_load, 0, []

    def refine(self, pairs, cycle):
        self.refines.append((cycle, len(pairs)))
        self.learned += len(pairs)
        if self.broken:
            raise AttributeError("'NoneType' object has no attribute 'step'\nsecond line")
        if any("POISON" in completion for _, completion in pairs):
            raise TypeError("cannot tokenize this\nTraceback (most recent call last): forged")
        return 0.25

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "learned.json").write_text(json.dumps(self.learned))

    def load(self, directory: Path) -> None:
        if self.bad_load:
            raise OSError(5, "Input/output error")
        self.learned = json.loads((directory / "learned.json").read_text())


ANSWERS = [net(0), net(1, "POISON"), net(2), net(3), net(4), net(5)]  # cycle 1: 0-2, cycle 2: 3-5


def _records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "archrefine.real"]


def test_a_selection_that_breaks_refine_is_left_out_and_the_run_goes_on(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    fake(monkeypatch, FakePool())
    gen, out = Learner(ANSWERS), tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="archrefine.real"):
        frame = run(small(), out, generator=gen)
    rows = cands(out)
    first, second = rows[rows.cycle == 1], rows[rows.cycle == 2]
    assert (rows.status == "ok").all() and not first.selected.any() and second.selected.any()
    left_out = first[first.reason.str.contains("left out of refinement")]
    assert len(left_out) >= 2  # the cycle's selection, POISON among them
    assert all("TypeError: cannot tokenize this" in r for r in left_out.reason)
    assert not any("Traceback" in r or "\n" in r for r in rows.reason)
    # the half-done first attempt was undone: only cycle 2's selection was learned from
    assert gen.learned == int(second.selected.sum())
    assert gen.refines[:2] == [(1, len(left_out)), (1, 0)]
    assert list(frame.loss) == [0.25, 0.25] and list(frame.pool_size) == [0, second.selected.sum()]
    (line,) = [m for m in _records(caplog) if "refining" in m]
    assert line.startswith("cycle 1: refining the generator on its") and "\n" not in line
    assert "TypeError: cannot tokenize this" in line and "refined without them" in line
    trace = (out / "errors" / "cycle-001-refine.txt").read_text()
    assert "Traceback" in trace and "in refine" in trace  # the whole story, in a file
    assert json.loads((out / "generator" / "cycle-001" / "learned.json").read_text()) == 0


class Interrupted(Learner):
    """Ctrl-C while cycle 1's state is saved: after its failed refine, before it is recorded."""

    def save(self, directory: Path) -> None:
        if directory.name == ".cycle-001.tmp":
            raise KeyboardInterrupt
        super().save(directory)


@pytest.mark.parametrize("stop", ["server-gone-in-cycle-2", "ctrl-c-before-cycle-1-is-recorded"])
def test_a_run_stopped_after_a_failed_refine_resumes_to_the_same_result(
    tmp_path: Path, monkeypatch, stop: str
) -> None:
    fake(monkeypatch, FakePool())
    whole = tmp_path / "whole"
    run(small(), whole, generator=Learner(ANSWERS))
    parts = tmp_path / "parts"
    if stop == "server-gone-in-cycle-2":
        with pytest.raises(GeneratorUnavailable):
            run(small(), parts, generator=Learner(ANSWERS, fail_after=1))
        assert completed_cycles(parts) == 1
    else:
        with pytest.raises(KeyboardInterrupt):
            run(small(), parts, generator=Interrupted(ANSWERS))
        assert completed_cycles(parts) == 0 and (parts / "errors" / "cycle-001-refine.txt").exists()
    again = Learner(ANSWERS[3:])  # a fresh process: cycle 2's answers come next
    run(small(), parts, generator=again, resume=True)
    keep = ["cycle", "code", "status", "reason", "selected", "near_duplicate"]
    pd.testing.assert_frame_equal(cands(whole)[keep], cands(parts)[keep])
    a, b = (pd.read_parquet(d / "metrics.parquet").drop(columns="seconds") for d in (whole, parts))
    pd.testing.assert_frame_equal(a, b)
    assert again.learned == json.loads(
        (whole / "generator" / "cycle-002" / "learned.json").read_text()
    )


def test_a_refine_that_always_fails_is_logged_and_keeps_the_earlier_state(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    fake(monkeypatch, FakePool())
    gen, out = Learner(ANSWERS, broken=True), tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="archrefine.real"):
        frame = run(small(), out, generator=gen)
    assert frame.loss.isna().all() and gen.learned == 0  # every half-step undone
    rows = cands(out)
    assert rows[rows.cycle == 1].selected.any()  # not the data's fault: the selection stands
    assert not rows.reason.str.contains("left out").any()
    lines = [m for m in _records(caplog) if "refining" in m]
    assert len(lines) == 2 and lines[0].startswith("cycle 1: refining the generator raised")
    assert "AttributeError: 'NoneType' object has no attribute 'step'" in lines[0]
    assert "second line" not in lines[0] and "keeps the state of cycle 0" in lines[0]
    trace = (out / "errors" / "cycle-002-refine.txt").read_text()
    assert trace.count("Traceback") == 2  # both attempts


def test_a_state_that_cannot_be_restored_stops_the_run_in_one_line(
    tmp_path: Path, monkeypatch
) -> None:
    fake(monkeypatch, FakePool())
    out = tmp_path / "run"
    with pytest.raises(StoreError, match="cannot be loaded back") as err:
        run(small(), out, generator=Learner(ANSWERS, broken=True, bad_load=True))
    assert "\n" not in str(err.value) and "--resume" in str(err.value)
    assert completed_cycles(out) == 0 and (cands(out).status == "ok").all()  # nothing lost


def test_an_unexpected_exception_scoring_one_candidate_costs_only_that_one(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    from archrefine.code.novelty_code import CodeNovelty

    score = CodeNovelty.score

    def odd(self, source: str) -> float:  # a route through datasketch nobody anticipated
        if "ODD" in source:
            raise LookupError("hostile\nsecond line of the message")
        return score(self, source)

    monkeypatch.setattr(CodeNovelty, "score", odd)
    fake(monkeypatch, FakePool())
    out = tmp_path / "run"
    answers = [net(0), net(1, "ODD"), net(2)]
    with caplog.at_level(logging.WARNING, logger="archrefine.real"):
        run(small(**{"loop.cycles": 1}), out, generator=Learner(answers))
    rows = cands(out)
    assert list(rows.status) == ["ok", "crashed", "ok"]
    assert rows.reason[1] == "crashed: scoring novelty raised LookupError: hostile"
    assert [m for m in _records(caplog) if "scoring novelty" in m] == [
        "scoring novelty raised LookupError: hostile; that candidate is crashed, the run goes on"
    ]


def test_an_outcome_that_cannot_be_stored_costs_only_its_candidate(
    tmp_path: Path, monkeypatch
) -> None:
    update = CandidateStore.update

    def refusing(self, cid, **fields):
        if fields.get("status") == "ok" and "ODD" in (self.cycle_rows(1)[cid - 1]["code"] or ""):
            raise KeyError("a field nobody expected")
        return update(self, cid, **fields)

    monkeypatch.setattr(CandidateStore, "update", refusing)
    fake(monkeypatch, FakePool())
    out = tmp_path / "run"
    run(small(**{"loop.cycles": 1}), out, generator=Learner([net(0), net(1, "ODD"), net(2)]))
    rows = cands(out)
    assert list(rows.status) == ["ok", "crashed", "ok"]
    assert rows.reason[1].startswith("crashed: storing its outcome raised KeyError")


def test_a_reply_too_big_to_parse_is_resampled_without_being_parsed(
    tmp_path: Path, monkeypatch
) -> None:
    valid = "x = 1\n" * (MAX_RESPONSE // 3)  # 2 MB of valid Python: ~1.5 GB and 4 s to parse
    code, why = code_or_error(valid)
    assert code is None and f"limit {MAX_RESPONSE:,}" in why
    code, why = code_or_error("x = 1\n" * 40_000)  # 240 kB: longer than code may be
    assert code is None and "too long to read as Python" in why

    class Big(Learner):
        def generate(self, prompts, sampling, seed):
            out = super().generate(prompts, sampling, seed)
            return [valid] + out[1:] if len(self.calls) == 1 else out

    fake(monkeypatch, FakePool())
    out = tmp_path / "run"
    gen = Big([net(0), net(1), net(2), net(3)])
    run(small(**{"loop.cycles": 1, "generator.retries": 1}), out, generator=gen)
    assert [len(c) for c in gen.calls] == [3, 1]  # the huge reply was resampled
    assert list(cands(out).status) == ["ok"] * 3


# ---- the sandbox: outputs and counts it must not trust -------------------------------------

H = "import torch\nfrom torch import nn\n"
BASE = (
    "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
    "        self.f = nn.Linear(64, 10)\n\n    def forward(self, x):\n"
    "        return self.f(x.flatten(1))\n"
)
COUNT = "    def parameters(self, recurse=True):\n        class P:\n            def numel(self):\n"


@pytest.fixture(scope="module")
def pool():
    from archrefine.sandbox.sandbox import SandboxPool

    with SandboxPool(1, timeout_s=10) as p:
        yield p


@pytest.mark.parametrize(
    "code, status, params",
    [
        (H + "class T(torch.Tensor):\n    @property\n    def shape(self):\n        return (2, 10)\n"
         + BASE.replace("x.flatten(1))", "x.flatten(1))[:1].as_subclass(T)"), "invalid", None),
        (H + BASE.replace("self.f(x.flatten(1))", "{'logits': 1}"), "invalid", None),
        (H + BASE.replace("return self.f(x.flatten(1))", "yield 1"), "invalid", None),
        (H + BASE.replace("self.f(x.flatten(1))", "self.f(x.flatten(1)) * float('nan')"), "ok",
         650),
        (H + BASE + COUNT + "                return 10**30\n        return iter([P()])\n", "ok",
         10**30),
        (H + BASE + COUNT + "                return -1\n        return iter([P()])\n", "crashed",
         None),
        (H + BASE + COUNT + "                return 'many'\n        return iter([P()])\n",
         "invalid", None),
    ],
    ids=["lying-tensor-subclass", "dict", "generator", "nan", "count-1e30", "count-neg",
         "count-str"],
)  # fmt: skip
def test_outputs_and_counts_a_candidate_forges_are_checked(pool, code, status, params) -> None:
    from archrefine.real.guard import checked

    out = pool.map([code], input_shape=(1, 8, 8))[0]
    fields = checked(out)
    assert (fields["status"], fields["params"]) == (status, params), out
    assert "\n" not in fields["reason"]


@pytest.mark.parametrize(
    "attack",
    [
        "import os\nos.chdir('/')\n",
        "import os\nfor fd in range(3, 256):\n    try:\n        os.close(fd)\n"
        "    except OSError:\n        pass\n",
        "import os\nos.close(1)\nos.close(2)\n",
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\n",
        "import resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (4, 4))\n",
    ],
    ids=["chdir", "close-fds", "close-stdout", "thread-left-running", "lower-own-limits"],
)
def test_a_candidate_that_rearranges_its_process_harms_no_other(pool, attack: str) -> None:
    from archrefine.real.guard import checked

    first, *rest = pool.map([H + attack + BASE, H + BASE, H + BASE], input_shape=(1, 8, 8))
    assert checked(first)["status"] in ("ok", "crashed", "forbidden", "invalid")
    assert [o.status for o in rest] == ["ok", "ok"] and all(o.params == 650 for o in rest)
