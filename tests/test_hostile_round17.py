"""Hostile candidates, round 17: the machine's OOM killer. Workers and their jobs ran at the
host's `oom_score_adj` (0), so when the machine ran out of memory the kernel killed the largest
process, which is often the host (a loaded generator, the run) rather than the job that used
the memory: without a memory cgroup a job may hold 32 processes of `memory_mb` each. Now every
worker starts at 1000 (the kernel's first choice), and where the host may set the floor
(CAP_SYS_RESOURCE) no job can lower it."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from archrefine.sandbox.pool import OOM_SCORE_ADJ  # noqa: E402
from archrefine.sandbox.sandbox import SandboxPool  # noqa: E402

SHAPE = (1, 8, 8)
NET = "import torch.nn as nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n"
NET += (
    "        super().__init__()\n        self.f = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n"
)
NET += "\n    def forward(self, x):\n        return self.f(x)\n"
LOWER = """
import ctypes
ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: /proc/self is ours again
before = open("/proc/self/oom_score_adj").read().strip()
try:
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("0")
except OSError as err:
    print("refused", err.errno)
print("adj", before, open("/proc/self/oom_score_adj").read().strip())
"""


def _may_set_floor() -> bool:
    """Whether we hold CAP_SYS_RESOURCE, which makes the value we set the floor for children."""
    with open("/proc/self/status") as f:
        caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    return bool(caps >> 24 & 1)


@pytest.mark.parametrize("isolation", ["bwrap", "rlimits"])
def test_jobs_are_the_oom_killers_first_choice_not_the_host(isolation: str) -> None:
    from archrefine.sandbox.sandbox import bwrap_problem

    if isolation == "bwrap" and bwrap_problem():
        pytest.skip(f"no bwrap: {bwrap_problem()}")
    with SandboxPool(1, timeout_s=20, isolation=isolation, audit=False) as pool:
        out = pool.run(LOWER + NET, input_shape=SHAPE)
    assert out.status == "ok", out
    words = out.log.split()
    before, after = words[words.index("adj") + 1 :][:2]
    assert int(before) == OOM_SCORE_ADJ == 1000  # was 0: the host's, so the host died first
    if _may_set_floor():  # the floor: only 1000 and up are allowed
        assert "refused" in out.log and int(after) == 1000, out.log


def test_a_cpu_pools_fallback_workers_see_no_gpu(tmp_path, monkeypatch) -> None:
    """The fallback sees the host's /dev. With CUDA visible, the worker's warm-up backward
    started autograd's device threads, and every job forked after it failed its own backward
    ("Unable to handle autograd's threading in combination with fork-based multiprocessing"):
    on a GPU machine a CPU pool scored every honest candidate `invalid`."""
    from archrefine.sandbox import workers

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert workers.launch("rlimits", tmp_path, 0).env["CUDA_VISIBLE_DEVICES"] == ""
    gpu = workers.launch("rlimits", tmp_path, 1, ["/dev/nvidia0"])
    assert gpu.env["CUDA_VISIBLE_DEVICES"] == "1"  # a GPU pool's: the GPUs it was assigned
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert "CUDA_VISIBLE_DEVICES" not in workers.launch("rlimits", tmp_path, 2, ["/dev/x"]).env


def test_a_forged_parameter_count_takes_a_few_characters_of_a_prompt() -> None:
    from archrefine.real.prompts import Reference, references_block

    huge = Reference("class Net: ...", accuracy=0.5, params=10**4299 + 7)
    block = references_block([huge, Reference("class Net: ...", accuracy=0.4, params=123_456)])
    assert "(accuracy 0.500, about 10^4299 parameters)" in block  # was 5,700 characters
    assert "(accuracy 0.400, 123,456 parameters)" in block and len(block) < 300


def test_a_worker_a_job_changed_says_what_changed_in_its_log() -> None:
    """A worker that asks to be replaced after a job writes which part of its snapshot the job
    changed (a test once saw a worker replaced after a job that only killed itself, with no
    way to tell why)."""
    renice = "import os\nos.setpriority(os.PRIO_PROCESS, os.getppid(), 7)  # our worker\n"
    with SandboxPool(1, timeout_s=20, isolation="rlimits", audit=False) as pool:
        assert pool.run(NET, input_shape=SHAPE).status == "ok"
        worker = pool._workers[0]
        before = worker.proc.pid
        assert pool.run(renice + NET, input_shape=SHAPE).status == "ok"
        log = Path(worker.errlog.name).read_text()
        assert pool._workers[0].proc.pid != before  # replaced: its niceness is the job's doing
        assert "left the worker changed: process 0" in log, log
        assert pool.run(NET, input_shape=SHAPE).status == "ok"
