"""The real loop's overlap: the sandbox starts on a cycle's first batch before the next one is
generated, and the stored results are those of scoring and evaluating after generation."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("datasketch")

from archrefine.code.novelty_code import CodeNovelty  # noqa: E402
from archrefine.real import overlap  # noqa: E402
from archrefine.real.candidates import CandidateStore  # noqa: E402
from archrefine.real.config import RealConfig  # noqa: E402
from archrefine.real.loop import Event  # noqa: E402
from archrefine.real.replies import row  # noqa: E402

NET = """```python
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, {c}, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                               nn.Flatten(), nn.Linear({c}, {width}))

    def forward(self, x):
        return self.f(x)
```
"""


class FakeEvaluation:
    """Outcome fields from the code alone (accuracy from its width); records when it ran."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.started = threading.Event()

    def run(self, codes: list[str], **train) -> list[dict]:
        self.calls.append(codes)
        self.started.set()
        return [
            dict(status="ok", reason="", params=len(c), accuracy=len(c) % 97 / 100) for c in codes
        ]


def batches() -> list[list[dict]]:
    replies = [NET.format(c=2 + i, width=10) for i in range(6)] + ["no code here"]
    replies += [NET.format(c=2, width=10)]  # a near duplicate of the first
    rows = [row(1, f"p{i}", r, []) for i, r in enumerate(replies)]
    return [rows[:4], rows[4:]]


def cycle(tmp_path, on: bool) -> tuple[list[dict], FakeEvaluation, list[bool]]:
    overlap.OVERLAP = on
    cfg = RealConfig().with_overrides({"evaluate.train": False, "evaluate.workers": 1})
    ev, started_before_second = FakeEvaluation(), []
    archive = CodeNovelty(cfg.novelty.shingle, cfg.novelty.num_perm, cfg.novelty.threshold, seed=1)
    archive.seed_with_known()
    with CandidateStore(tmp_path / f"{on}.sqlite") as store:
        work = overlap.CycleWork(store, ev, archive, 1, cfg, None, lambda e: None, Event)
        try:
            first, second = batches()
            store.add_many(first)
            work.step()
            started_before_second.append(ev.started.wait(30) if on else ev.started.is_set())
            store.add_many(second)
            work.step()
            work.finish()
        finally:
            work.close()
            overlap.OVERLAP = True
        return store.cycle_rows(1), ev, started_before_second


def test_the_first_batch_runs_before_the_second_exists_and_the_results_match_the_old_order(
    tmp_path,
):
    rows_on, ev_on, started = cycle(tmp_path, True)
    rows_off, ev_off, idle = cycle(tmp_path, False)
    assert (
        started == [True] and idle == [False] and ev_on.calls[0] and len(ev_on.calls[0]) <= 2
    )  # chunk: workers·2
    assert sum(map(len, ev_on.calls)) == sum(map(len, ev_off.calls)) == 7  # not the no-code one
    keep = ["id", "status", "reason", "params", "accuracy", "novelty", "near_duplicate"]
    assert [{k: r[k] for k in keep} for r in rows_on] == [{k: r[k] for k in keep} for r in rows_off]
    assert [r["status"] for r in rows_on].count("pending") == 0
    assert rows_on[-1]["near_duplicate"] and not rows_on[0]["near_duplicate"]
