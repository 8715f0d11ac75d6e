"""The hostile suite, round 13: a package directory where no pattern looked, and the scheduler
slice a job leaves on its worker.

Same rules as `test_hostile.py`: each test is one attack a model-written candidate could make,
run through the real `SandboxPool` in whatever isolation this machine gives (most without the
audit hook, which is advisory: the OS layer is what must hold); each fails on the code before
its fix.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")

from test_hostile import FIND_DIGITS, NET, NS_FALLBACK, PRIVATE, SHAPE, checked  # noqa: E402

from archrefine.sandbox import confine  # noqa: E402
from archrefine.sandbox.sandbox import SandboxPool  # noqa: E402

pytestmark = [pytest.mark.torch]


@pytest.fixture(scope="module")
def raw_pool():
    """No audit hook: only the OS layer stands between the candidate and its worker."""
    with SandboxPool(1, timeout_s=10, audit=False) as p:
        yield p


# ---- 1. a copy of the data in a package directory no fixed pattern named ----------------------


@pytest.fixture
def stray_site():
    """scikit-learn's digits file in a Python of its own under /usr/local (a conda base there, an
    application's bundled Python under /usr/lib, Fedora's /usr/lib64/python3.X/site-packages are
    the same case): visible to every worker, which binds /usr read-only. Root only (CI is)."""
    if not os.access("/usr/local", os.W_OK):
        pytest.skip("needs write access to /usr/local (root) to plant the copy")
    top = Path("/usr/local") / f"archrefine-r13-{secrets.token_hex(4)}"
    data = top / "lib/python3.11/site-packages/sklearn/datasets/data"
    try:
        data.mkdir(parents=True)
        (data / "digits.csv.gz").write_bytes(b"0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0\n")
        for d in [top, *data.relative_to(top).parents, data.relative_to(top)]:
            (top / d).chmod(0o755)
        (data / "digits.csv.gz").chmod(0o644)
        confine.found_package_dirs.cache_clear()  # pools made after this search /usr again
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)
        confine.found_package_dirs.cache_clear()


@pytest.mark.parametrize("isolation", ["auto", "rlimits"])
def test_a_python_of_its_own_under_usr_cannot_show_the_data(stray_site: Path, isolation: str):
    """Package directories were hidden by fixed patterns (/usr/lib/python3*/*-packages,
    /usr/local/lib/python3*/*-packages, the interpreter prefixes' lib/python3*): one anywhere
    else under /usr stayed readable, the digits in it too (`FOUND ...`, then 1.00 by lookup).
    Now every site-/dist-packages under what a worker sees is found and hidden like the others."""
    if not PRIVATE or (isolation == "rlimits" and not NS_FALLBACK):
        pytest.skip("the data is hidden only in a view of its own (bwrap, or root + unshare)")
    with SandboxPool(1, timeout_s=30, isolation=isolation, audit=False) as pool:
        out = pool.run(FIND_DIGITS + NET, input_shape=SHAPE)
    checked(out)
    assert out.status == "ok", out


# ---- 2. scheduling attributes a job sets on its worker -----------------------------------------

SCHED = {"x86_64": (314, 315), "aarch64": (274, 275)}.get(os.uname().machine)
LIBC = "import ctypes, os, struct\nlibc = ctypes.CDLL(None, use_errno=True)\n"
READ = LIBC + (  # struct sched_attr (56 bytes): sched_runtime, the fair slice, at offset 24
    "attr = ctypes.create_string_buffer(56)\n"
    "assert libc.syscall(GET, 0, attr, 56, 0) == 0, ctypes.get_errno()\n"
    "print('SLICE', struct.unpack_from('Q', attr.raw, 24)[0])\n"
)
PLANT = LIBC + (  # size, policy SCHED_OTHER, no flags, nice 0, priority 0, runtime = the slice
    "attr = struct.pack('IIqIIQQQII', 56, 0, 0, 0, 0, SLICE, 0, 0, 0, 0)\n"
    "assert libc.syscall(SET, os.getppid(), attr, 0) == 0, ctypes.get_errno()\n"
)


def _slice(pool: SandboxPool) -> int:
    out = pool.run(READ.replace("GET", str(SCHED[1])) + NET, input_shape=SHAPE)
    assert out.status == "ok" and "SLICE" in out.log, out
    return int(out.log.split("SLICE")[-1].split()[0])


@pytest.mark.skipif(SCHED is None, reason=f"no syscall numbers for {os.uname().machine}")
def test_a_job_cannot_leave_its_worker_a_scheduler_slice(raw_pool: SandboxPool) -> None:
    """`sched_setattr` on the worker (same uid, no ptrace needed) set the fair scheduler's slice
    (`sched_runtime`, 0.1 to 100 ms since Linux 6.12) that every later job of the worker
    inherited: the snapshot compared the policy and priority only. It now compares the whole
    `sched_getattr` (slice, utilisation clamps, flags), and such a job's worker is replaced."""
    before = _slice(raw_pool)
    if before == 0:
        pytest.skip("this kernel reports no slice for the fair scheduler (before Linux 6.12)")
    planted = 3_000_000 if before != 3_000_000 else 5_000_000
    plant = PLANT.replace("SET", str(SCHED[0])).replace("SLICE", str(planted))
    out = raw_pool.run(plant + NET, input_shape=SHAPE)
    assert out.status == "ok", out  # the kernel lets a job do it...
    assert _slice(raw_pool) == before  # ...and the next job no longer inherits it


def test_the_search_finds_a_conda_cache_and_reads_a_prefix_that_is_a_link(tmp_path: Path):
    """What the search must find without root: a conda prefix's package cache (archives of
    scikit-learn, digits inside), a site-packages at any depth, through a prefix that is a
    symlink (a venv reached by a link); what it must not: a `pkgs` that is no conda cache."""
    base = tmp_path / "conda"
    for d in ("conda-meta", "pkgs", "envs/x/lib/python3.12/site-packages", "share/pkgs"):
        (base / d).mkdir(parents=True)
    (base / "pkgs/scikit-learn-1.5.0-py312.conda").write_bytes(b"an archive")
    (tmp_path / "link").symlink_to(base)
    found = confine.found_package_dirs((str(tmp_path / "link"),))
    assert found == {str(base / "pkgs"), str(base / "envs/x/lib/python3.12/site-packages")}
