"""How a sandbox worker is started: bubblewrap's options, the fallback's namespaces, the config.

Split from `sandbox.py`, which holds the public API; nothing here runs candidate code. Probes
(does bwrap work here? does `unshare`?) run once per process and are cached.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archrefine.sandbox import confine

WORKER = Path(__file__).with_name("_worker.py")
MARKER = "archrefine-sandbox-worker"
INSIDE = "/sandbox"  # where the worker, inputs and scratch space appear inside bwrap
UID_BASE = 2_000_000  # dedicated uids for sandboxed workers when we are root (never real users)
WORK_MB = 256  # the tmpfs each worker's job directories live on
UNSHARE = str.split("unshare --mount --pid --fork --kill-child --mount-proc --net --ipc --uts --")


def kill_uid(uid: int) -> int:
    """SIGKILL every process whose real uid is `uid` (a dedicated sandbox uid); return the count."""
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as f:
            line = next(line for line in f if line.startswith("Uid:"))
            if int(line.split()[1]) == uid:
                os.kill(int(pid), signal.SIGKILL)
                n += 1
    return n


def _uid_in_use(uid: int) -> bool:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as f:
            line = next(line for line in f if line.startswith("Uid:"))
            if uid in map(int, line.split()[1:]):
                return True
    return False


def fresh_uid() -> int:
    """A dedicated uid for one worker, at random among 2^30 (>= UID_BASE: never a real user) and
    used by no process now. Not derived from our pid and a counter: two pools whose pids agreed
    modulo 16384 shared uids (replacing a worker killed every process of its uid, the other
    pool's worker too), and a counter wraps, handing a later worker an earlier one's per-uid
    kernel state (keys)."""
    while True:
        uid = UID_BASE + secrets.randbelow(1 << 30)
        if not _uid_in_use(uid):
            return uid


@dataclass(frozen=True)
class Launch:
    """Everything needed to start one worker: argv, environment and the paths it sees."""

    argv: list[str]
    env: dict[str, str]
    inputs: str  # the host's input directory as the worker sees it
    uid: int | None  # dedicated uid when we are root, so the host can sweep its processes
    name: str  # distinguishes the worker's files in the pool directory


@functools.cache
def unshare_problem() -> str:
    """Why the fallback cannot give workers their own namespaces here ("" when it can)."""
    if os.geteuid() != 0:
        return "not root"
    if not shutil.which("unshare"):
        return "unshare (util-linux) is not installed"
    try:
        proc = subprocess.run(
            [*UNSHARE, "true"],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": "/usr/bin:/bin"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    return "" if proc.returncode == 0 else f"unshare failed: {' '.join(proc.stderr.split())[:120]}"


def _env(home: str) -> dict[str, str]:
    """The scrubbed environment: only what Python needs, single-threaded numerics."""
    single = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env = dict(PATH="/usr/bin:/bin", HOME=home, TMPDIR=home, LANG="C.UTF-8", **single)
    return env | {"PYTHONHASHSEED": "0"}  # set iteration order, too, is the same every run


def _python() -> tuple[str, list[str]]:
    """The interpreter to run (a venv keeps working) and the directories it needs to read."""
    exe = os.path.join(
        os.path.realpath(os.path.dirname(sys.executable)), os.path.basename(sys.executable)
    )
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for mod in ("torch", "numpy"):
        spec = importlib.util.find_spec(mod)
        if spec and spec.submodule_search_locations:
            dirs.add(os.path.dirname(list(spec.submodule_search_locations)[0]))
    return exe, sorted({os.path.realpath(d) for d in dirs if os.path.isdir(d)})


def _site_dirs() -> list[str]:
    """Directories holding torch and numpy: the worker's extra sys.path (PYTHONPATH is dropped)."""
    return [
        d
        for d in _python()[1]
        if os.path.isdir(os.path.join(d, "torch")) or os.path.isdir(os.path.join(d, "numpy"))
    ]


def _outermost(paths: list[str]) -> list[str]:
    kept: list[str] = []
    for p in sorted(set(paths)):
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in kept):
            kept.append(p)
    return kept


def _bwrap_prefix(
    inputs: str, as_root: bool, disable_userns: bool, devices: Sequence[str] = ()
) -> list[str]:
    """bwrap options: read-only system and Python, private /tmp, /proc, /dev; no network.
    `devices` (GPU device nodes, `confine.gpu_devices`) are bound into the private /dev."""
    args = ["bwrap"] + str.split(
        "--unshare-net --unshare-pid --unshare-ipc --unshare-uts --unshare-cgroup-try "
        "--die-with-parent --new-session --clearenv"
    )
    if as_root:  # keep just enough to drop to a dedicated uid (RLIMIT_NPROC ignores uid 0)
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-user"] + (["--disable-userns"] if disable_userns else [])
    system = [f"/{n}" for n in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc")]
    for p in system:
        if os.path.islink(p):
            args += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            args += ["--ro-bind", p, p]
    # /tmp first: Python may live under /tmp (a CI clone), and later binds must sit on top;
    # not writable for jobs (TMPDIR is the job's own directory), so no job leaves files there
    args += str.split(f"--proc /proc --dev /dev --size {1 << 20} --perms 0755 --tmpfs /tmp")
    args += ["--mqueue", "/dev/mqueue"]  # the worker lists the POSIX queues a job leaves
    args += confine.bwrap_gpu(list(devices))
    binds = [p for p in _outermost(system + _python()[1]) if p not in system]
    made: set[str] = set()
    for p in binds:
        parents = Path(p).parents
        for anc in reversed([str(a) for a in parents if str(a) != "/"]):
            if anc not in made and anc not in system:
                args += ["--perms", "0755", "--dir", anc]
                made.add(anc)
        args += ["--ro-bind", p, p]
    args += confine.bwrap_view(confine.python_prefixes())  # no dataset, only torch and numpy
    args += str.split(  # the size caps what a job can park in memory-backed files; 0733: jobs
        # may enter their own (randomly named) directory but not list the others
        f"--size {WORK_MB << 20} --perms 0733 --tmpfs {INSIDE}/work --chdir {INSIDE}/work"
    )
    for name in ("_worker.py", "_worker_os.py"):
        args += ["--ro-bind", str(WORKER.with_name(name)), f"{INSIDE}/{name}"]
    args += ["--ro-bind", inputs, f"{INSIDE}/in"]
    for key, value in _env(f"{INSIDE}/work").items():
        args += ["--setenv", key, value]
    if devices and "CUDA_VISIBLE_DEVICES" in os.environ:  # which GPUs Ray (or a user) assigned
        args += ["--setenv", "CUDA_VISIBLE_DEVICES", os.environ["CUDA_VISIBLE_DEVICES"]]
    return args + ["--"]


@functools.cache
def bwrap_config() -> tuple[bool, str]:
    """Find a bwrap configuration that works here, once: (disable_userns, problem or "")."""
    if not shutil.which("bwrap"):
        return False, "bwrap is not installed (apt-get install bubblewrap)"
    as_root = os.geteuid() == 0
    u = UID_BASE
    drop = f"os.setgroups([]); os.setresgid({u}, {u}, {u}); os.setresuid({u}, {u}, {u}); "
    check = (
        "import os, sys; "
        + (drop if as_root else "")
        + "[os.listdir(d) for d in sys.path if os.path.isdir(d)]; print('ok')"
    )
    exe = _python()[0]
    problem = ""
    with tempfile.TemporaryDirectory(prefix="archrefine-probe-") as tmp:
        os.chmod(tmp, 0o755)
        for disable_userns in (False,) if as_root else (True, False):
            argv = _bwrap_prefix(tmp, as_root, disable_userns) + [exe, "-s", "-B", "-c", check]
            try:
                proc = subprocess.run(
                    argv,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                return False, f"bwrap probe failed: {exc}"
            if proc.returncode == 0 and proc.stdout.strip() == "ok":
                return disable_userns, ""
            lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
            problem = f"bwrap probe failed: {lines[-1][:150]}"
    return False, problem


def bwrap_problem() -> str:
    """Why bubblewrap cannot confine workers here ("" when it can)."""
    return bwrap_config()[1]


# top-level directories the fallback leaves visible (read-only to the dedicated uid): the system
SYSTEM_TOP = frozenset(str.split("usr bin sbin lib lib32 lib64 libx32 etc dev proc sys"))


def _fallback_cover() -> list[str]:
    """Every other top-level directory (the repository, /opt, /var, /root, other Pythons, pip
    caches, ...) and /dev/shm get an empty tmpfs in the fallback's mount namespace, so its view is
    bwrap's: what the worker needs is bound back (`keep`)."""
    top = [f"/{n}" for n in sorted(os.listdir("/")) if n not in SYSTEM_TOP]
    return ["/dev/shm"] + [d for d in top if os.path.isdir(d) and not os.path.islink(d)]


def launch(mode: str, root: Path, index: int, devices: Sequence[str] = ()) -> Launch:
    """How to start worker `index` of a pool whose host directory is `root` (inputs in root/in);
    under bwrap, `devices` (GPU nodes) are bound in (the fallback sees the host's /dev)."""
    as_root = os.geteuid() == 0
    uid = fresh_uid() if as_root else None
    exe = _python()[0]
    cfg: dict[str, Any] = {"uid": uid, "gid": uid, "path": _site_dirs(), "gpu": bool(devices)}
    if mode == "bwrap":
        cfg.update(workroot=f"{INSIDE}/work", chown=False, unshare_net=False)
        cfg.update(private_work=True, private_ipc=True, work_mb=WORK_MB, mqueue="/dev/mqueue")
        argv = _bwrap_prefix(str(root / "in"), as_root, bwrap_config()[0], devices)
        argv += [exe, "-s", "-B", f"{INSIDE}/_worker.py", MARKER, json.dumps(cfg)]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        return Launch(argv, env, f"{INSIDE}/in", uid, str(index))
    work = root / f"work-{index}"
    work.mkdir(mode=0o700)
    cfg.update(workroot=str(work), chown=as_root, unshare_net=as_root, private_work=False)
    argv = [exe, "-s", "-B", str(WORKER), MARKER]
    if as_root and not unshare_problem():  # its own namespaces: private /tmp, /proc, no data
        prefixes = confine.python_prefixes()
        cfg.update(
            unshare_net=False,
            chown=False,
            private_work=True,
            private_ipc=True,
            work_mb=WORK_MB,
            mqueue="/dev/mqueue" if os.path.isdir("/dev/mqueue") else "/run/archrefine-mqueue",
            cover=_fallback_cover(),
            hide=confine.fallback_view(prefixes),
            keep=sorted({str(root), str(WORKER.parent), exe, *prefixes, *_site_dirs()}),
        )
        argv = UNSHARE + argv
    # the fallback sees the host's /dev: a CPU pool's workers must not see its GPUs (with CUDA
    # visible, the warm-up's backward starts autograd's device threads, and every job forked
    # after it failed its backward: "Unable to handle autograd's threading ... fork")
    env = _env(str(work))
    if not devices:
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif "CUDA_VISIBLE_DEVICES" in os.environ:  # which GPUs Ray (or a user) assigned
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return Launch(argv + [json.dumps(cfg)], env, str(root / "in"), uid, str(index))
