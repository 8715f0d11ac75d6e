"""The hostile suite, continued (issue 11, third round): attacks that worked after the first two.

Same rules as `test_hostile.py`: each test is one attack (or a family of variants) a model-written
candidate could make, run through the real `SandboxPool` in whatever isolation this machine gives
(`ARCHREFINE_SANDBOX=rlimits` runs them on the fallback); `docs/sandbox.md` names each test next
to the guarantee it shows.
"""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")

from archrefine.sandbox._worker_os import _safe_json  # noqa: E402
from archrefine.sandbox.jobs import parse_reply  # noqa: E402
from archrefine.sandbox.sandbox import STATUSES, SandboxPool, TrainSpec  # noqa: E402

pytestmark = [pytest.mark.torch]
SHAPE = (1, 8, 8)
NET = """
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        return self.f(x)
"""


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(1, timeout_s=10) as p:
        yield p


@pytest.fixture(scope="module")
def raw_pool():
    """No audit hook: only the OS layer stands between the candidate and its worker."""
    with SandboxPool(1, timeout_s=10, audit=False) as p:
        yield p


def _cpu_seconds(root: int) -> float:
    """CPU time (user + system) of the live processes under `root` (the worker and whatever
    started it: bwrap or unshare), from /proc; a finished job's time is not in it."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        parent[int(name)], ticks[int(name)] = int(fields[1]), int(fields[11]) + int(fields[12])
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += [p for p, pp in parent.items() if pp == pid and p not in tree]
    return sum(ticks.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


def _settled_worker(pool: SandboxPool) -> int:
    """The pid of a worker that ran a job and stayed. A warm-up job judged to have left its
    worker changed (on a loaded machine a tmpfs can count a removed tree a moment longer) gets
    the worker replaced, and the replacement's start-up (importing torch, ~1.5 CPU seconds)
    would then be counted as the next job's: the flake this check once showed in CI."""
    for _ in range(5):
        root = pool._workers[0].proc.pid
        assert pool.run(NET, input_shape=SHAPE).status == "ok"
        if pool._workers[0].proc.pid == root:
            return root
    raise AssertionError("every warm-up job got its worker replaced")


FLOOD_PIPE = """
import os, signal, stat

def isfifo(fd):
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return False

signal.signal(signal.SIGALRM, lambda *_: os._exit(0))
signal.setitimer(signal.ITIMER_REAL, 3)  # write for 3 s, blocking once nobody reads
pipe, block = next(fd for fd in range(3, 64) if isfifo(fd)), b"x" * (1 << 20)
while True:
    os.write(pipe, block)
"""


@pytest.mark.parametrize(
    "job",
    [
        "import os, time\nos.closerange(3, 1024)\ntime.sleep(3)\n",  # a closed pipe
        FLOOD_PIPE,  # 3 s of writing past the cap
    ],
)
def test_a_job_cannot_keep_its_worker_busy_through_its_pipe(pool: SandboxPool, job: str) -> None:
    """The worker waited on the job's pipe with `select`, which reports a closed pipe as
    readable forever: a job closing it and sleeping kept its worker spinning a whole core (3.9
    CPU seconds in a 4 s job), taken from the other workers' candidates on a small machine; a
    job writing without end was read (and discarded) as fast as it wrote."""
    root = _settled_worker(pool)
    before = _cpu_seconds(root)
    out = pool.run(job + NET)
    spent = _cpu_seconds(root) - before
    assert out.status == "crashed" and pool._workers[0].proc.pid == root, out
    assert spent < 0.3, f"the worker used {spent:.2f} CPU seconds during a 3 s job"


FLOOD = """
import os
flood = b'"' + b'\\\\"' * 32000  # an unterminated JSON string of escaped quotes, 64 KB
for fd in range(3, 64):
    try:
        os.write(fd, flood)
    except OSError:
        pass
os._exit(0)
"""


def test_a_flood_of_escaped_quotes_is_refused_at_once(pool: SandboxPool) -> None:
    """A report of escaped quotes made the worker's nesting check (a regular expression) retry
    from every quote: 64 KB cost ~20 s of the worker's time, so the job ran into its deadline
    (`timeout` after 3 s) instead of being refused as malformed."""
    out = pool.run(FLOOD, timeout_s=3)
    assert out.status == "crashed" and "malformed" in out.reason, out
    assert out.status in STATUSES and out.seconds < 3
    # the host's own check of worker replies reads strings the same way (unit level)
    assert parse_reply(b'"' + b'\\"' * 400_000) is None
    assert parse_reply(b'{"a": "x\\"[[{", "b": [1, 2]}') == {"a": 'x"[[{', "b": [1, 2]}
    assert parse_reply(b'{"a": "\\\\", "b": [[1]]}') is None  # an escaped backslash ends "a"
    assert _safe_json(b'{"r": "\\\\\\"]]", "p": [3]}', 1 << 10) == {"r": '\\"]]', "p": [3]}


SEEDED = """
import random
import numpy as np
import torch.nn as nn

H = 8 + random.randrange(32) + int(np.random.randint(32))

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Flatten(), nn.Linear(64, H), nn.ReLU(), nn.Linear(H, 10))

    def forward(self, x):
        return self.f(x)
"""


def _seeded_params(seed: int) -> int:
    h = 8 + random.Random(seed).randrange(32) + int(np.random.RandomState(seed).randint(32))
    return 64 * h + h + h * 10 + 10


def test_python_and_numpy_randomness_of_a_candidate_is_seeded() -> None:
    """`random` is reseeded from the OS at every fork and numpy's global generator when a
    worker starts, so a candidate drawing its width (or initial weights) from them got a
    different network, accuracy and selection on every run and resume; both are now seeded
    with the job's seed, like torch's."""
    rng = np.random.default_rng(0)
    data = (
        rng.normal(size=(40, *SHAPE)).astype(np.float32),
        rng.integers(0, 10, 40),
        rng.normal(size=(8, *SHAPE)).astype(np.float32),
        rng.integers(0, 10, 8),
    )
    with SandboxPool(2, timeout_s=10) as two:
        plain = two.map([SEEDED] * 4, input_shape=SHAPE)
        trained = two.map([SEEDED] * 2, input_shape=SHAPE, train=TrainSpec(seed=7), data=data)
    assert [o.params for o in plain] == [_seeded_params(0)] * 4, plain
    assert [o.params for o in trained] == [_seeded_params(7)] * 2, trained
    assert trained[0].accuracy == trained[1].accuracy


PROBE_PARENT = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
parent, reached = os.getppid(), []

class Iov(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

buf = ctypes.create_string_buffer(64)
heap = next(int(line.split("-")[0], 16) for line in open("/proc/self/maps") if "[heap]" in line)
mine, theirs = Iov(ctypes.cast(buf, ctypes.c_void_p), 64), Iov(heap, 64)
for name in ("process_vm_readv", "process_vm_writev"):
    if getattr(libc, name)(parent, ctypes.byref(mine), 1, ctypes.byref(theirs), 1, 0) >= 0:
        reached.append(name)
if libc.syscall(438, os.pidfd_open(parent), 1, 0) >= 0:  # pidfd_getfd: the worker's stdout
    reached.append("pidfd_getfd")
for what, mode in (("mem", "rb"), ("environ", "rb"), ("timerslack_ns", "w"), ("comm", "w")):
    try:
        with open(f"/proc/{parent}/{what}", mode) as f:
            f.read(8) if "r" in mode else f.write("1")
        reached.append(what)
    except OSError:
        pass
for what in ("fd", "root", "cwd", "map_files"):
    try:
        os.listdir(f"/proc/{parent}/{what}")
        reached.append(what)
    except OSError:
        pass
if reached:
    raise ValueError("REACHED " + " ".join(reached))
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="pidfd_getfd's number is x86_64's")
def test_a_job_cannot_read_or_write_its_workers_memory_or_descriptors(
    raw_pool: SandboxPool,
) -> None:
    """Variants of reaching the trusted worker (same uid) that the worker being non-dumpable
    refuses: cross-memory reads and writes, stealing its descriptors, its /proc files."""
    out = raw_pool.run(PROBE_PARENT + NET, input_shape=SHAPE)
    assert out.status == "ok", (out.reason, out.log[-300:])


@pytest.mark.parametrize(
    "route",
    [
        "signal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGKILL)",  # not audited
    ],
)
def test_signals_to_the_worker_by_an_unaudited_route_cost_only_that_job(
    pool: SandboxPool, route: str
) -> None:
    out = pool.run(f"import os, signal, time\n{route}\ntime.sleep(30)\n" + NET, timeout_s=2)
    assert out.status in ("crashed", "timeout") and out.seconds < 3, out
    assert [o.status for o in pool.map([NET] * 2, input_shape=SHAPE)] == ["ok", "ok"]


WEDGE = """
from archrefine.real.replies import MAX_RESPONSE, row
from archrefine.real.text import _tokens_in

for reply in ("```" + " " * (MAX_RESPONSE - 3), "```" + "\\t" * (MAX_RESPONSE - 4) + "x"):
    print(row(1, "prompt", reply, [])["status"], len(_tokens_in(reply)))
"""


def test_a_fence_followed_by_a_megabyte_of_blanks_does_not_wedge_the_loop() -> None:
    """Reading the code block out of a reply (in the loop's own process) split the fence's info
    string inside one pattern, which backtracked quadratically on ``` and blanks without a
    newline: 20 KB took 0.5 s, a reply of the allowed 1 MB ~20 minutes of a stalled loop. A
    separate process, so that a regression fails here instead of hanging the suite."""
    proc = subprocess.run(
        [sys.executable, "-c", WEDGE], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout.split() == ["no_code", "0", "no_code", "0"]


INTRICATE = """
from archrefine.real.replies import row

HEAD = "import torch.nn as nn\\nclass Net(nn.Module):\\n    def __init__(self):\\n"
HEAD += "        super().__init__()\\n"
TAIL = "    def forward(self, x):\\n        return self.l(x)\\n"
loops = "".join("        " + "    " * d + f"for i{d} in range(32):\\n" for d in range(4))
nested = HEAD + "        self.l = nn.ModuleList()\\n" + loops
nested += " " * 24 + "self.l.append(nn.ReLU())\\n"
doubling = HEAD + "        a = [nn.ReLU()]\\n        for i in range(32):\\n            a += a\\n"
doubling += "        self.l = nn.Sequential(*a)\\n"
for code in (nested + TAIL, doubling + TAIL):
    fields = row(1, "prompt", "```python\\n" + code + "```", [])
    print(fields.get("status"), "intricate" in (fields.get("reason") or ""), len(code) < 500)
"""


def test_a_few_hundred_characters_of_nested_loops_cannot_stall_the_loop() -> None:
    """The fingerprint (read in the loop's own process, for every reply) unrolls short loops:
    four nested `range(32)` loops in 415 characters were a million passes, 118 s and growing
    memory per candidate; `a += a` in a loop doubled a list 32 times. Reading now has a budget
    (`code.fingerprint.BUDGET`, 200,000 steps; the test corpus needs under 500) and such code is
    `rejected` with that reason. A separate process, so that a regression cannot take the
    suite's memory."""
    proc = subprocess.run(
        [sys.executable, "-c", INTRICATE],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)),
    )
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout.split() == ["rejected", "True", "True"] * 2, proc.stdout


GOOD_BLOCK = f"```python{NET}```\n"
HUGE_RANGE = GOOD_BLOCK.replace(
    "        super().__init__()\n",
    "        super().__init__()\n        if False:\n            for i in range(10**22 + 1):\n"
    "                pass\n",
).replace("10**22 + 1", str(10**22 + 1))


def test_a_second_code_block_cannot_poison_the_learned_generator() -> None:
    """The learned generator reads every ```python block of a selected reply (`refine`) and of
    a prompt (`generate`), but only a reply's first block is read when it is stored: a second
    block looping over `range(10**22)` made `len(range)` overflow while unrolling it — an
    OverflowError in the loop's own process, again on every resume of that cycle."""
    from archrefine.real.replies import row
    from archrefine.real.text import LearnedTextGenerator, Sampling

    reply = GOOD_BLOCK + "\nOr, unrolled:\n" + HUGE_RANGE
    assert row(1, "prompt", reply, []).get("status") is None  # the first block: a candidate
    assert row(1, "prompt", HUGE_RANGE, []).get("status") is None  # now read as a plain loop
    generator = LearnedTextGenerator(seed=0)
    loss = generator.refine([("prompt", reply)], 1)
    assert loss is None or np.isfinite(loss)
    assert len(generator.generate([reply], Sampling(), seed=0)) == 1
