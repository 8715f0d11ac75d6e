"""Hostile candidates, round 15: kernel keys. A worker inherited its host's session keyring (a
systemd service's, a login's), which every job possessed: a job read the host's keys, and left
keys there that every later job of every worker read. Keys a job put in its uid's keyrings
outlived its worker (and uid) in the kernel's memory, counted in no cgroup (197 keys, 19 KB of
payload per job, until reboot). Also: the report reads replies cut by SQLite, not whole."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from archrefine.sandbox._worker_os import KEYCTL  # noqa: E402
from archrefine.sandbox.sandbox import SandboxPool, bwrap_problem  # noqa: E402

pytestmark = [
    pytest.mark.skipif(bool(bwrap_problem()), reason=f"no bwrap: {bwrap_problem()}"),
    pytest.mark.skipif(os.uname().machine not in KEYCTL, reason="keyctl number unknown here"),
]
SHAPE = (1, 8, 8)
NET = """
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Linear(64, 10)

    def forward(self, x):
        return self.f(x.flatten(1))
"""
KEYS = f"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
NR = {KEYCTL.get(os.uname().machine)}


def add(name, ring):
    return libc.syscall(NR - 2, b"user", name, b"x" * 90, 90, ring)  # add_key


def read(name):
    kid = libc.syscall(NR, 10, -3, b"user", name, 0)  # KEYCTL_SEARCH the session keyring
    buf = ctypes.create_string_buffer(64)
    return buf.value.decode() if kid > 0 and libc.syscall(NR, 11, kid, buf, 64) > 0 else None
"""


def _session_keyring_pool() -> SandboxPool | None:
    """A pool whose workers start from a thread with a session keyring of its own holding a
    secret (as a systemd service's or a login's): the pool is made in that thread, whose
    credentials (keyrings) its workers inherit; the rest of this process keeps its own."""
    import ctypes
    import threading

    libc, nr, box = ctypes.CDLL(None, use_errno=True), KEYCTL[os.uname().machine], {}

    def start() -> None:
        if libc.syscall(nr, 1, None) > 0:  # KEYCTL_JOIN_SESSION_KEYRING: a new, anonymous one
            libc.syscall(nr - 2, b"user", b"host-secret", b"hunter2", 7, -3)  # add_key
            box["pool"] = SandboxPool(2, timeout_s=10, isolation="bwrap", audit=False)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    return box.get("pool")


@pytest.fixture(scope="module")
def pool():
    p = _session_keyring_pool()
    if p is None:
        pytest.skip("keyctl refused here")
    with p:
        yield p


def test_a_job_cannot_reach_the_hosts_session_keyring(pool: SandboxPool) -> None:
    # before the fix: the job read "hunter2", and its key "left" was read by every later job
    # of every worker (here the other one, started from the same keyring)
    steal = KEYS + "print('stole', read(b'host-secret'))\nadd(b'left', -3)\n" + NET
    look = KEYS + "import time\ntime.sleep(1)\nprint('found', read(b'left'))\n" + NET
    first, other = pool.map([steal, look], input_shape=SHAPE)
    assert (first.status, other.status) == ("ok", "ok"), (first, other)
    assert "stole None" in first.log and "hunter2" not in first.log
    assert "found None" in other.log


def _keys_of(uid: int) -> int:
    for line in Path("/proc/key-users").read_text().splitlines():
        who, _, rest = line.partition(":")
        if who.strip() == str(uid):
            return int(rest.split()[1].split("/")[0])
    return 0


def test_keys_a_job_leaves_do_not_outlive_its_worker(pool: SandboxPool) -> None:
    fill = KEYS + (
        "persistent = libc.syscall(NR, 22, -1, -3)\n"
        "n = sum(add(b'k%d' % i, ring) > 0 for i in range(60)\n"
        "        for ring in (-4, -5, persistent))\n"
        "print('added', n, 'uid', os.getuid())\n"
    )
    first = pool.run(fill + NET, input_shape=SHAPE)
    assert first.status == "ok", first
    words = first.log.split()
    added, uid = int(words[words.index("added") + 1]), int(words[words.index("uid") + 1])
    assert added >= 150
    deadline = time.monotonic() + 5  # the kernel frees unlinked keys a moment later
    while _keys_of(uid) > 3 and time.monotonic() < deadline:  # a uid's own three keyrings
        time.sleep(0.1)
    assert _keys_of(uid) <= 3  # before the fix: 183 keys, until reboot


def test_a_change_to_a_keyring_the_next_job_could_read_makes_the_worker_dirty() -> None:
    # a worker's keyrings are its jobs' uid's: a job set their permissions (32 bits) and
    # expiry, which the key count did not show, and the next job of that worker read both
    # (measured through a pool: 0x3f1b0a00 and "1h"). Here in a thread of our own, whose
    # session keyring is its own, so nothing else of this process sees the change.
    import ctypes
    import threading

    from archrefine.sandbox._worker_os import _my_keys

    libc, nr, seen = ctypes.CDLL(None, use_errno=True), KEYCTL[os.uname().machine], []

    def change() -> None:
        if libc.syscall(nr, 1, None) > 0:  # KEYCTL_JOIN_SESSION_KEYRING
            seen.append(_my_keys())
            libc.syscall(nr, 5, -3, 0x3F1B0A00)  # KEYCTL_SETPERM
            seen.append(_my_keys())
            libc.syscall(nr, 15, -3, 3600)  # KEYCTL_SET_TIMEOUT
            seen.append(_my_keys())

    thread = threading.Thread(target=change)
    thread.start()
    thread.join()
    if not seen:
        pytest.skip("keyctl refused here")
    assert len(set(seen)) == 3, seen


TIME_WAIT = """
import socket, sys
sys.path.insert(0, sys.argv[1])
from _worker_os import _snapshot
before = _snapshot("/", False, True)
srv = socket.socket()
srv.bind(("127.0.0.1", 41001))
srv.listen(1)
c = socket.create_connection(("127.0.0.1", 41001))
s, _ = srv.accept()
s.close(), c.close(), srv.close()  # ours closed first: TIME_WAIT, for a minute
print(before != _snapshot("/", False, True))
before = _snapshot("/", False, True)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(37):  # to nowhere: no socket stays, but the namespace counts them
    try:
        u.sendto(b"x", ("10.9.9.9", 9))
    except OSError:
        pass
u.close()
print(before != _snapshot("/", False, True))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace of its own needs root")
def test_sockets_and_traffic_of_a_job_in_its_workers_network_namespace_make_it_dirty() -> None:
    # under bwrap a worker's jobs share its network namespace (a loopback): a job's TIME_WAIT
    # sockets stayed a minute, and the next job read their ports (16 bits each) in
    # /proc/net/tcp (measured through a pool: 41001, 41002, 41003); its counters too (37 sends
    # to an unroutable address: Ip OutNoRoutes 37, the next job's to read). Here in `unshare`'s.
    import shutil
    import subprocess
    import sys

    from archrefine.sandbox import _worker_os

    if not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs unshare and ip (util-linux, iproute2)")
    here = str(Path(_worker_os.__file__).parent)
    script = f"ip link set lo up && {sys.executable} -c '{TIME_WAIT}' {here}"
    proc = subprocess.run(
        ["unshare", "--net", "sh", "-c", script], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert proc.stdout.split() == ["True", "True"]


ACCESS_TIME = """
import os, sys
sys.path.insert(0, sys.argv[1])
from _worker_os import _mount, _snapshot
_mount("none", "/tmp", "tmpfs", 0)  # now, not before python starts: it may live under /tmp
os.mkdir("/tmp/work", 0o733)
before = _snapshot("/tmp/work", True, False)
os.utime("/tmp/work", ns=(123_456_789, os.stat("/tmp/work").st_mtime_ns))  # a message
print(before != _snapshot("/tmp/work", True, False))
before = _snapshot("/tmp/work", True, False)
os.mkdir("/tmp/work/job"), os.rmdir("/tmp/work/job")  # what the worker does for a job
print(before != _snapshot("/tmp/work", True, False))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a mount namespace of its own needs root")
def test_an_access_time_a_job_sets_on_the_work_root_makes_the_worker_dirty() -> None:
    # the work root is writable (0733) to jobs, so a job may set its times (utime); the
    # worker's own mkdir of the next job's directory resets the modification time, not the
    # access time, which the next job read (measured through a pool). In `unshare`'s /tmp.
    import shutil
    import subprocess
    import sys

    from archrefine.sandbox import _worker_os

    if not shutil.which("unshare"):
        pytest.skip("needs unshare (util-linux)")
    here = str(Path(_worker_os.__file__).parent)
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", ACCESS_TIME,
         here],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert proc.stdout.split() == ["True", "False"]  # a job's change; not the worker's own


def test_the_report_reads_replies_cut_and_only_where_no_code_was_found(tmp_path: Path) -> None:
    from archrefine.real.candidates import CandidateStore
    from archrefine.report.source import CANDIDATE_FIELDS, RESPONSE_CHARS, read_candidates

    path = tmp_path / "candidates.sqlite"
    replies = ["a" * 5000, "é" * 10, None, "\N{SLIGHTLY SMILING FACE}" * 4001]
    with CandidateStore(path) as store:
        store.add_many(
            dict(cycle=0, trial=i, prompt="p", response=replies[i % 4], status="ok",
                 code=[None, "x = 1", None, None][i % 4], params=[None, 2**70][i % 2],
                 parent_ids=[1] if i else ())
            for i in range(8)
        )  # fmt: skip
        frame = store.to_frame()
    # what the report did: every reply read whole, then trimmed here
    frame["response"] = frame.response.where(frame.code.isna()).map(
        lambda r: r[:RESPONSE_CHARS] if isinstance(r, str) else None
    )
    expected = frame[[*CANDIDATE_FIELDS, "response"]]
    import pandas as pd

    pd.testing.assert_frame_equal(read_candidates(path), expected)
    with CandidateStore(path) as store:
        slim = store.to_frame(reply_chars=RESPONSE_CHARS)
    assert slim.prompt.isna().all()
    assert [len(r) if isinstance(r, str) else None for r in slim.response] == [
        4000, None, None, 4000, 4000, None, None, 4000
    ]  # fmt: skip
