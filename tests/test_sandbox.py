"""Hostile candidates against the real sandbox: each is contained and reported, we carry on.

Real worker processes (torch imported inside them). Pools are shared per module to keep the file
well under 90 s on two cores; each hostile case still runs in a fresh, confined child process.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import resource
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from archrefine.sandbox.sandbox import (  # noqa: E402
    MARKER,
    SandboxPool,
    TrainSpec,
    isolation_level,
    run_code,
)

pytestmark = [pytest.mark.torch, pytest.mark.slow]
HAS_BWRAP = isolation_level().startswith("bwrap")
needs_bwrap = pytest.mark.skipif(
    not HAS_BWRAP,
    reason="bubblewrap (bwrap) is missing, does not work here, or ARCHREFINE_SANDBOX=rlimits",
)
ESCAPE = Path("/tmp/archrefine_escape_test")
REPO_ESCAPE = Path(__file__).resolve().parent / "archrefine_escape_test.txt"

NET = """
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))

    def forward(self, x):
        return self.f(x)
"""
NET_PARAMS = 3 * 4 * 9 + 4 + 4 * 36 * 10 + 10
SHAPE = (3, 8, 8)
LOOP = "while True:\n    pass\n"
FORK_BOMB = "import os\nwhile True:\n    os.fork()\n"
STUBBORN_FORK_BOMB = (  # keeps looping when fork fails: only a kill ends it
    "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
)
SOCKET = "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)\n"
PRINT_1GB = (
    "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)\n"
)


def write_to(path: Path) -> str:
    return f"open({str(path)!r}, 'w').write('escaped')\n" + NET


def sandbox_pids() -> set[int]:
    """Every process (bwrap, zygote, job child, its forks) whose command line names the worker."""
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if MARKER.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.add(int(pid))
        except OSError:
            pass
    return pids


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of a live process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after the command name, which may hold ")"
    return int(fields[1]), int(fields[3])


def _descends_from_us(pid: int) -> bool:
    me = os.getpid()
    while pid > 1:
        if pid == me:
            return True
        pid = (_stat(pid) or (0, 0))[0]
    return False


@contextlib.contextmanager
def own_sandbox_sessions() -> Iterator[set[int]]:
    """The sessions of the sandbox processes this test process starts inside the block (the pool
    starts each worker in a new session, bwrap another inside; forks inherit it, and keep it when
    orphaned): what is left in them is this test's, whatever other test runs (or this module's
    warm pools, whose sessions are older) use the sandbox."""

    def ours() -> set[int]:
        return {st[1] for pid in sandbox_pids()
                if (st := _stat(pid)) is not None and _descends_from_us(pid)}  # fmt: skip

    older, sessions = ours(), set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            sessions.update(ours() - older)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield sessions
    finally:
        done.set()
        watcher.join()


def own_settle_within(seconds: float, sessions: set[int]) -> bool:
    """Whether every sandbox process in `sessions` is gone within `seconds`."""
    deadline = time.monotonic() + seconds
    while any((_stat(pid) or (0, 0))[1] in sessions for pid in sandbox_pids()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(2, timeout_s=10) as p:
        yield p


@pytest.fixture(scope="module")
def raw_pool():
    """bwrap without the audit hook: only the OS layer stands between candidate and host."""
    if not HAS_BWRAP:
        pytest.skip(
            "bubblewrap (bwrap) is missing, does not work here, or ARCHREFINE_SANDBOX=rlimits"
        )
    with SandboxPool(1, timeout_s=10, isolation="bwrap", audit=False) as p:
        yield p


@pytest.fixture(scope="module")
def fallback_pool():
    with SandboxPool(1, timeout_s=10, isolation="rlimits") as p:
        yield p


@pytest.fixture(autouse=True)
def no_escape_files():
    for path in (ESCAPE, REPO_ESCAPE):
        path.unlink(missing_ok=True)
    yield
    for path in (ESCAPE, REPO_ESCAPE):
        assert not path.exists(), f"{path} was written from inside the sandbox"


def test_valid_net_is_ok_and_counts_parameters() -> None:
    out = run_code(NET, input_shape=SHAPE, timeout_s=20)
    assert (out.status, out.reason, out.params) == ("ok", "ok", NET_PARAMS)
    assert out.isolation == isolation_level() and out.accuracy is None and out.seconds > 0


def test_source_never_runs_in_the_calling_process(pool: SandboxPool) -> None:
    out = pool.run(
        "import builtins\nbuiltins.ARCHREFINE_RAN_HERE = True\n" + NET, input_shape=SHAPE
    )
    assert out.status == "ok" and not hasattr(builtins, "ARCHREFINE_RAN_HERE")


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (NET.replace("10)", "7)"), "invalid: forward returned shape (2, 7), expected (2, 10)"),
        ("import torch\nclass Net(:\n    pass\n", "invalid: SyntaxError line 2: invalid syntax"),
        ("x = 1\n", "invalid: source defines no class Net(nn.Module)"),
        (NET.replace("self.f(x)", "self.f(x.view(7, -1))"), "invalid: RuntimeError: shape"),
        ("raise ValueError('nope')\n", "invalid: ValueError: nope (in module body)"),
    ],
)
def test_broken_candidates_are_invalid_with_a_reason(
    pool: SandboxPool, source: str, reason: str
) -> None:
    out = pool.run(source, input_shape=SHAPE)
    assert out.status == "invalid" and out.reason.startswith(reason), out
    assert out.params is None


def test_infinite_loop_times_out_promptly(pool: SandboxPool) -> None:
    assert pool.run(NET, input_shape=SHAPE).status == "ok"  # a worker is warm
    start = time.monotonic()
    out = pool.run(LOOP, timeout_s=2)
    assert out.status == "timeout" and "2 s" in out.reason
    assert time.monotonic() - start < 4


@pytest.mark.parametrize(
    "alloc", ["import torch\nx = torch.empty(50 * 2**30 // 4)\n", "x = bytearray(50 * 2**30)\n"]
)
def test_50_gb_allocation_is_oom(pool: SandboxPool, alloc: str) -> None:
    out = pool.run(alloc + NET, input_shape=SHAPE)
    assert out.status == "oom", out


def test_socket_is_forbidden(pool: SandboxPool) -> None:
    out = pool.run(SOCKET + NET, input_shape=SHAPE)
    assert out.status == "forbidden" and "network" in out.reason, out


@pytest.mark.parametrize("target", [ESCAPE, REPO_ESCAPE])
def test_writing_outside_the_workdir_is_forbidden(pool: SandboxPool, target: Path) -> None:
    out = pool.run(write_to(target), input_shape=SHAPE)
    assert out.status == "forbidden" and "writing" in out.reason, out


def test_writing_inside_the_workdir_is_fine(pool: SandboxPool) -> None:
    out = pool.run("open('scratch.txt', 'w').write('ok')\n" + NET, input_shape=SHAPE)
    assert out.status == "ok", out


def test_printing_a_gigabyte_is_contained(pool: SandboxPool) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = pool.run(PRINT_1GB, timeout_s=20)
    assert out.status == "forbidden" and "file size limit" in out.reason, out
    assert len(out.log) <= 2000
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB


def test_training_is_deterministic_under_the_seed(pool: SandboxPool) -> None:
    rng = np.random.default_rng(0)
    x, x_val = rng.normal(size=(200, *SHAPE)), rng.normal(size=(60, *SHAPE))
    y, y_val = rng.integers(0, 10, 200), rng.integers(0, 10, 60)
    data = (x.astype(np.float32), y, x_val.astype(np.float32), y_val)
    outs = pool.map([NET, NET], input_shape=SHAPE, train=TrainSpec(seed=3), data=data)
    assert [o.status for o in outs] == ["ok", "ok"]
    assert 0.0 <= outs[0].accuracy <= 1.0 and outs[0].accuracy == outs[1].accuracy
    again = pool.run(NET, input_shape=SHAPE, train=TrainSpec(seed=3), data=data)
    assert again.accuracy == outs[0].accuracy


def test_pool_survives_hostile_jobs_in_the_middle(pool: SandboxPool) -> None:
    sources = [NET, LOOP, NET, FORK_BOMB, NET, SOCKET, NET, NET.replace("10)", "7)"), NET]
    outs = pool.map(sources, input_shape=SHAPE, timeout_s=2)
    assert [o.status for o in outs] == [
        "ok", "timeout", "ok", "forbidden", "ok", "forbidden", "ok", "invalid", "ok"
    ]  # fmt: skip
    assert all("\n" not in o.reason and len(o.reason) <= 200 for o in outs)


# ---- the OS layer alone (bwrap, no audit hook) -------------------------------------------------


@needs_bwrap
def test_fork_bomb_is_contained_and_leaves_no_process() -> None:
    start = time.monotonic()
    with own_sandbox_sessions() as sessions:  # not another test run's sandboxes
        out = run_code(STUBBORN_FORK_BOMB, timeout_s=2, isolation="bwrap", audit=False)
    assert out.status in {"timeout", "crashed", "forbidden"}, out
    assert time.monotonic() - start < 30
    assert sessions, "the sandbox's processes were never seen"
    assert own_settle_within(5, sessions), "processes of the sandbox outlived it"


@needs_bwrap
def test_bwrap_blocks_network_and_host_files_without_the_hook(raw_pool: SandboxPool) -> None:
    out = raw_pool.run(SOCKET + NET, input_shape=SHAPE)
    assert out.status == "forbidden" and "network unavailable" in out.reason, out
    for target in (ESCAPE, REPO_ESCAPE):
        out = raw_pool.run(write_to(target), input_shape=SHAPE)
        # bwrap shows a private /tmp and no repository at all: ok, or ENOENT (invalid)
        assert out.status in {"ok", "forbidden", "invalid"}, out
        assert not target.exists()


@needs_bwrap
def test_killing_the_parent_spares_the_caller(raw_pool: SandboxPool) -> None:
    out = raw_pool.run("import os\nos.kill(os.getppid(), 9)\n" + NET, input_shape=SHAPE)
    assert out.status in {"crashed", "forbidden"}, out
    os.kill(os.getpid(), 0)  # still here
    assert raw_pool.run(NET, input_shape=SHAPE).status == "ok"


# ---- the fallback: rlimits (+ a dedicated uid and network namespace when root) + audit hook -----


def test_fallback_forbids_socket_and_writes(fallback_pool: SandboxPool) -> None:
    assert fallback_pool.run(NET, input_shape=SHAPE).isolation == "rlimits+audit"
    out = fallback_pool.run(SOCKET + NET, input_shape=SHAPE)
    assert out.status == "forbidden" and "network" in out.reason, out
    for target in (ESCAPE, REPO_ESCAPE):
        out = fallback_pool.run(write_to(target), input_shape=SHAPE)
        assert out.status == "forbidden" and "writing" in out.reason, out


def test_fallback_imports_the_standard_library(fallback_pool: SandboxPool) -> None:
    """Modules not pre-imported before the uid drop load too, even when Python lives under a
    directory the dedicated uid cannot enter (e.g. /root/.pyenv): the fallback binds it back."""
    out = fallback_pool.run("import tomllib, xml.dom.minidom, fractions\n" + NET, input_shape=SHAPE)
    assert out.status == "ok", out


def test_fallback_times_out_promptly(fallback_pool: SandboxPool) -> None:
    assert fallback_pool.run(NET, input_shape=SHAPE).status == "ok"
    start = time.monotonic()
    out = fallback_pool.run(LOOP, timeout_s=2)
    assert out.status == "timeout" and time.monotonic() - start < 4, out
    assert fallback_pool.run(NET, input_shape=SHAPE).status == "ok"


@pytest.mark.skipif(os.geteuid() != 0, reason="the fallback contains fork bombs only as root")
def test_fallback_contains_a_fork_bomb_without_the_hook() -> None:
    with own_sandbox_sessions() as sessions:
        out = run_code(STUBBORN_FORK_BOMB, timeout_s=2, isolation="rlimits", audit=False)
    assert out.status in {"timeout", "crashed", "forbidden"}, out
    assert sessions, "the sandbox's processes were never seen"
    assert own_settle_within(5, sessions), "processes of the sandbox outlived it"
