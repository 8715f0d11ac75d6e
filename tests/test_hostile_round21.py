"""Hostile candidates, round 21: kernel memory no cgroup counts, and a worker's autogroup.

A job of `memory_mb` 64 held 1.7 GB of the machine's memory in netlink sockets it never read
(936 MB in loopback TCP at 256, 349 MB in UDP queues) and ended `ok`: the memory cgroup v1
charges socket buffers only for TCP with a limit of its own, UDP and netlink not at all. Through
the real loop's evaluation too, with the audit policy on: the job exec'd a fresh interpreter
(`_posixsubprocess`, which raises no audit event), which has no policy. Every job now runs
under a seccomp filter (`_worker_os.job_filters`): sockets of AF_UNIX only (charged to the
cgroup), no io_uring, no namespaces, no bpf/perf/userfaultfd, and with the audit policy no
exec. Also: a process a job started set the niceness of the worker's session autogroup, which
every later job of that worker shared; the worker's snapshot now includes it."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("torch")

from test_hostile_more import NET, SHAPE  # noqa: E402  (a small honest net)

from archrefine.sandbox import _worker_os  # noqa: E402
from archrefine.sandbox.jobs import SandboxWarning  # noqa: E402
from archrefine.sandbox.sandbox import SandboxPool, bwrap_problem  # noqa: E402

FILTERED = not _worker_os.job_filters()[1]
pytestmark = pytest.mark.skipif(
    not FILTERED, reason=f"no seccomp here: {_worker_os.job_filters()[1]}"
)
ISOLATIONS = [
    pytest.param("bwrap", marks=pytest.mark.skipif(bool(bwrap_problem()), reason="no bwrap")),
    "rlimits",
]
# each made in the job's own process; a raise means it was made
SOCKETS = """
import ctypes, errno, socket
made = []
for family, kind in ((socket.AF_INET, socket.SOCK_STREAM), (socket.AF_INET6, socket.SOCK_DGRAM),
                     (socket.AF_NETLINK, socket.SOCK_RAW), (socket.AF_PACKET, socket.SOCK_RAW)):
    try:
        socket.socket(family, kind).close()
        made.append(family)
    except OSError:
        pass
a, b = socket.socketpair()  # AF_UNIX: its buffers are charged to the job's cgroup
a.close(), b.close()
libc = ctypes.CDLL(None, use_errno=True)
NR = {"x86_64": {"io_uring_setup": 425, "unshare": 272}, "aarch64": {"io_uring_setup": 425,
      "unshare": 97}}.get(__import__("os").uname().machine, {})
params = ctypes.create_string_buffer(120)
if NR and libc.syscall(NR["io_uring_setup"], 4, params) >= 0:
    made.append("io_uring")
if NR and libc.syscall(NR["unshare"], 0x10000000 | 0x40000000) == 0:  # a user and net namespace
    made.append("namespace")
if made:
    raise RuntimeError(f"made {made}")
"""
# a fresh interpreter, which has no audit policy: the filter must still hold there
EXEC_SOCKET = """
import subprocess, sys
code = "import socket; socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)"
run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
if run.returncode == 0:
    raise RuntimeError("a netlink socket from an exec'd interpreter")
if "Errno 97" not in run.stderr:  # EAFNOSUPPORT, the filter's answer
    raise RuntimeError(run.stderr[-300:])
"""
# `_posixsubprocess` raises no audit event; exec must fail where the policy is on
EXEC_QUIETLY = """
import os, _posixsubprocess
r, w = os.pipe()
pid = _posixsubprocess.fork_exec(
    [b"/bin/sh", b"-c", b"exit 0"], [b"/bin/sh"], True, (w,), None, None,
    -1, -1, -1, -1, -1, -1, r, w, True, False, -1, None, None, None, -1, None, False)
os.close(w)
_, status = os.waitpid(pid, 0)
if os.waitstatus_to_exitcode(status) == 0:
    raise RuntimeError("exec ran")
"""
AUTOGROUP = """
import subprocess
subprocess.run(["/bin/sh", "-c", "echo 19 > /proc/self/autogroup"], check=False)
"""
READ_AUTOGROUP = """
print("AUTOGROUP", open("/proc/self/autogroup").read().split()[-1])
"""


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_job_makes_no_socket_but_a_unix_one_and_no_namespace_or_io_uring(isolation) -> None:
    with SandboxPool(1, timeout_s=30, isolation=isolation, audit=False) as pool:
        outs = pool.map([SOCKETS + NET, EXEC_SOCKET + NET], input_shape=SHAPE)
        assert pool.syscall_filter == "seccomp"
    assert [(o.status, o.reason) for o in outs] == [("ok", "ok")] * 2


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_with_the_audit_policy_no_job_starts_a_program(isolation) -> None:
    with SandboxPool(1, timeout_s=30, isolation=isolation, audit=True) as pool:
        quiet, honest = pool.map([EXEC_QUIETLY + NET, NET], input_shape=SHAPE)
    assert (quiet.status, honest.status) == ("ok", "ok"), (quiet.reason, honest.reason)
    with SandboxPool(1, timeout_s=30, isolation=isolation, audit=False) as pool:
        ran = pool.run(EXEC_QUIETLY + NET, input_shape=SHAPE)
    assert ran.status == "invalid" and "exec ran" in ran.reason  # the policy off: it may


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no autogroups here")
def test_a_job_that_sets_its_sessions_autogroup_leaves_no_later_job_with_it() -> None:
    with SandboxPool(1, timeout_s=30, audit=False) as pool:
        outs = pool.map([AUTOGROUP + NET, READ_AUTOGROUP + NET], input_shape=SHAPE)
    assert [o.status for o in outs] == ["ok", "ok"], [o.reason for o in outs]
    assert "AUTOGROUP 0" in outs[1].log, outs[1].log  # was 19: the first job's worker


def test_without_libseccomp_the_pool_says_so(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pyseccomp", None)  # import fails
    filters, why = _worker_os.job_filters()
    assert filters == {} and why.startswith("no seccomp filter:") and "pyseccomp" in why
    pool = SandboxPool.__new__(SandboxPool)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        pool._filtered(why + " (a test)")
    assert pool.syscall_filter.startswith("none (no seccomp filter")
    assert any(issubclass(w.category, SandboxWarning) for w in seen)
    pool._filtered("")
    assert pool.syscall_filter == "seccomp"


def test_the_filter_outlives_exec_and_holds_in_threads() -> None:
    """Checked here without a sandbox: a child that loads the filter, then a thread of it and
    a program it execs, each try an AF_INET socket."""
    code = (
        "import sys, os, socket, threading, subprocess\n"
        f"sys.path.insert(0, {str(Path(_worker_os.__file__).parent)!r})\n"
        "from _worker_os import job_filters\n"
        "job_filters()[0]['plain'].load()\n"
        "out = []\n"
        "def t():\n"
        "    try: socket.socket(); out.append('made')\n"
        "    except OSError as e: out.append(e.errno)\n"
        "th = threading.Thread(target=t); th.start(); th.join()\n"
        "r = subprocess.run([sys.executable, '-c', 'import socket; socket.socket()'],"
        " capture_output=True)\n"
        "print(out[0], r.returncode)\n"
    )
    import subprocess

    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-800:]
    assert run.stdout.split() == [str(97), "1"]  # EAFNOSUPPORT in the thread, and in the program
    import socket

    socket.socket().close()  # the process that built the filters stays unfiltered
