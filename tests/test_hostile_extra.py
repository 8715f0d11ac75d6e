"""The hostile suite, a fourth round: exceptions, forged reports, patches and orphans.

Same rules as `test_hostile.py`: each test is one attack (or a family of variants) a model-written
candidate could make, run through the real `SandboxPool` in whatever isolation this machine gives;
each must cost that candidate its own outcome and nothing else — no forged accuracy, no harm to
the job after it, whose outcome is compared with the same job run before the attack.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from test_hostile import NET, SHAPE, digits_data  # noqa: E402

from archrefine.real.guard import checked  # noqa: E402
from archrefine.sandbox import confine  # noqa: E402
from archrefine.sandbox.sandbox import SandboxPool, TrainSpec  # noqa: E402

pytestmark = [pytest.mark.torch]
TRAIN = TrainSpec(epochs=1, seed=0)
DATA = digits_data(300)


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(1, timeout_s=10, memory_mb=512) as p:
        yield p


@pytest.fixture(scope="module")
def raw_pool():
    """No audit hook: only the OS layer stands between the candidate and its worker."""
    with SandboxPool(1, timeout_s=10, memory_mb=512, audit=False) as p:
        yield p


@pytest.fixture(scope="module")
def honest(pool: SandboxPool):
    """The honest network's trained outcome before any attack: what it must stay after one."""
    out = pool.run(NET, input_shape=SHAPE, train=TRAIN, data=DATA)
    assert out.status == "ok" and out.accuracy is not None, out
    return out.params, out.accuracy


def _unharmed(pool: SandboxPool, honest: tuple) -> None:
    out = pool.run(NET, input_shape=SHAPE, train=TRAIN, data=DATA)
    assert (out.status, out.params, out.accuracy) == ("ok", *honest), out


UNSHOWABLE = "class E(Exception):\n    def __str__(self):\n        raise E()\n\n"


@pytest.mark.parametrize(
    "code, status",
    [
        (UNSHOWABLE + "raise E()\n" + NET, "invalid"),
        (UNSHOWABLE + NET.replace("return self.f(x)", "raise E()"), "invalid"),
        (UNSHOWABLE + "import sys\n\nclass C:\n    def __str__(self):\n        raise E()\n\n"
         "sys.exit(C())\n" + NET, "invalid"),
        ("import socket\ntry:\n    socket.socket()\nexcept OSError:\n    pass\n" + UNSHOWABLE
         + "raise E()\n" + NET, "forbidden"),
        ("raise KeyboardInterrupt\n" + NET, "invalid"),
        (NET.replace("return self.f(x)", "raise GeneratorExit('x')"), "invalid"),
    ],
    ids=["str-raises", "str-raises-in-forward", "exit-code-str-raises", "refusal-then-str-raises",
         "keyboard-interrupt", "generator-exit"],
)  # fmt: skip
def test_an_exception_that_cannot_be_shown_is_still_the_candidates_outcome(
    pool: SandboxPool, honest: tuple, code: str, status: str
) -> None:
    """An exception class is the candidate's: its `__str__` (or SystemExit's `code`) may raise.
    Describing it raised again in the child, which died without a report — `crashed: exited
    with code 70 and no result`, not the `invalid` of any exception from candidate code, and a
    refusal the candidate had caught (`forbidden`) was lost."""
    out = pool.run(code, input_shape=SHAPE)
    fields = checked(out)
    assert fields["status"] == status, out
    assert fields["reason"].startswith(status) and "\n" not in fields["reason"]
    _unharmed(pool, honest)


FORGE = """
import json, os, stat, signal

def forge(raw):
    for fd in range(3, 64):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, raw)
        except OSError:
            pass
    END

"""
LABELS = "[2] * 450"  # one class everywhere: what a forger without the labels can do at best


@pytest.mark.parametrize(
    "call, status",
    [
        ("forge(json.dumps({'status': 'ok', 'reason': 'ok', 'params': 5, 'preds': " + LABELS
         + ", 'accuracy': 1.0, 'dirty': False, 'id': 0}).encode())", "ok"),
        ("forge(b'{\"status\": \"ok\", \"reason\": \"ok\", \"params\": NaN, \"preds\": [0]}')",
         "crashed"),
        ("forge(json.dumps({'status': 'ok', 'params': 5, 'preds': [True] * 450}).encode())",
         "crashed"),
        ("forge(json.dumps({'status': 'ok', 'params': 5, 'preds': [1.0] * 450}).encode())",
         "crashed"),
        ("forge(json.dumps({'status': 'ok', 'params': 5, 'preds': [10] * 450}).encode())",
         "crashed"),
        ("forge(json.dumps({'status': 'ok', 'params': 5, 'preds': [2] * 449}).encode())",
         "crashed"),
        ("forge(b'{\"status\": \"ok\", \"preds\": [1], \"params\": 5, \"preds\": ' + "
         "json.dumps(" + LABELS + ").encode() + b'}')", "crashed"),
        ("forge(b'{\"status\": \"ok\", \"params\": 5}' * 2)", "crashed"),
        ("forge(json.dumps({'status': 'ok ', 'params': 5, 'preds': " + LABELS + "}).encode())",
         "crashed"),
    ],
    ids=["extra-keys", "nan-count", "bool-preds", "float-preds", "class-out-of-range",
         "one-short", "duplicate-key", "two-objects", "status-padded"],
)  # fmt: skip
@pytest.mark.parametrize("end", ["os._exit(0)", "signal.raise_signal(signal.SIGKILL)"])
def test_forged_reports_of_every_shape_earn_nothing(
    pool: SandboxPool, honest: tuple, call: str, status: str, end: str
) -> None:
    """A job may write any report to its own pipe: the fields it adds (`accuracy`, `dirty`)
    are dropped, every malformed one is `crashed`, and the best it can earn is what guessing
    one class earns; a report followed by its own death is that death, never an `ok`."""
    out = pool.run(FORGE.replace("END", end) + call + "\n", input_shape=SHAPE, train=TRAIN,
                   data=DATA)  # fmt: skip
    fields = checked(out)
    killed = "crashed" if pool.memory_scope == "cgroup" else "oom"  # only a cgroup can tell
    expected = status if end == "os._exit(0)" else killed
    assert fields["status"] == expected, out
    assert fields["accuracy"] is None or fields["accuracy"] < 0.2, out
    _unharmed(pool, honest)


PATCHES = """
import builtins, json, random, sys
import numpy as np
import torch
import torch.nn.functional as F

torch.Tensor.argmax = lambda self, *a, **k: torch.zeros(self.shape[0], dtype=torch.long)
F.cross_entropy = lambda *a, **k: torch.zeros((), requires_grad=True)
torch.manual_seed = random.seed = np.random.seed = lambda *a, **k: None
json.dumps = lambda *a, **k: '{"status": "ok", "params": 1}'
sys.modules["__main__"]._train = lambda *a, **k: [0] * 450
builtins.int = float
builtins.print = None
"""


def test_patches_to_torch_builtins_and_the_harness_die_with_their_job(
    pool: SandboxPool, honest: tuple
) -> None:
    """A job that patches torch, numpy, `random`, `json`, the builtins and the harness itself at
    import time changes its own process only: each job is a fresh fork of the warm worker, so
    the next job trains to exactly the accuracy it had before."""
    out = pool.run(PATCHES + NET, input_shape=SHAPE, train=TRAIN, data=DATA)
    assert checked(out)["accuracy"] is None or checked(out)["accuracy"] < 0.2, out
    _unharmed(pool, honest)


ORPHAN = """
import ctypes, os, signal, time

JOB = os.getpid()


def linger():  # outlive the job, then kill every process of our uid (the next job's too)
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:  # the job's end first, however slow the machine
        try:
            os.kill(JOB, 0)
        except ProcessLookupError:
            break
        time.sleep(0.01)
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
    os._exit(0)

"""


@pytest.mark.parametrize(
    "spawn",
    [
        "if ctypes.CDLL(None).syscall(56, 0x8000 | 17, 0, 0, 0, 0) == 0:\n    linger()\n",
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        linger()\n"
        "    os._exit(0)\n",
    ],
    ids=["clone-parent-sibling", "setsid-double-fork"],
)
def test_an_orphan_that_outlives_its_job_cannot_kill_the_next(raw_pool: SandboxPool, spawn: str):
    """A process made with CLONE_PARENT is the worker's own child, beside the job, not under it;
    a double-forked, `setsid` one is reparented to the worker. Either, left alive, would kill
    the next job of the same uid: both are reaped with the job that made them."""
    first, *after = raw_pool.map([ORPHAN + spawn + NET, NET, NET], input_shape=SHAPE)
    assert first.status == "ok", first
    assert [o.status for o in after] == ["ok", "ok"], after


# ---- a job's share of the CPU ------------------------------------------------------------------

HOG = """
import os
for _ in range(40):  # as many busy processes as its task limit allows, each in its own session
    try:
        if os.fork() == 0:
            os.setsid()  # a session of its own: the kernel's autogroup no longer pools them
            break
    except OSError:
        break
while True:
    pass
"""
WORK = (
    """
import time
t = time.process_time()
while time.process_time() - t < 2.0:  # 2 s of CPU, then the honest network
    pass
"""
    + NET
)


@pytest.fixture(scope="module")
def pair():
    """Two workers, no audit hook (which refuses fork): only the OS layer shares the CPU."""
    with SandboxPool(2, timeout_s=8, audit=False) as p:
        if p.cpu_share != "worker":
            pytest.skip(f"no cpu cgroup per worker here: {confine.cpu_problem()}")
        # both ready: a worker's shell joins its cgroups before it starts, and a job waits for it
        assert [o.status for o in p.map([NET, NET], input_shape=SHAPE)] == ["ok", "ok"]
        yield p


def test_each_worker_has_a_cpu_cgroup_of_its_own(pair: SandboxPool) -> None:
    def cpu_line(pid: int | str) -> str:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        return next((x for x in lines if "cpu" in x.split(":")[1].split(",")), lines[-1])

    deadline = time.monotonic() + 10  # a worker's shell joins before it starts: allow a slow one
    while True:
        lines = {cpu_line(w.proc.pid) for w in pair._workers}
        if (len(lines) == 2 and cpu_line("self") not in lines) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(lines) == 2 and cpu_line("self") not in lines, lines


def test_a_job_with_many_busy_processes_cannot_starve_another_workers_job(
    pair: SandboxPool,
) -> None:
    """The hog's 30-odd processes share one worker's weight: the job beside it gets its core
    and finishes 2 s of CPU well within 8 s (without per-worker shares it timed out)."""
    hog, work = pair.map([HOG, WORK], input_shape=SHAPE)
    checked(hog)
    assert hog.status == "timeout", hog
    assert work.status == "ok", work
