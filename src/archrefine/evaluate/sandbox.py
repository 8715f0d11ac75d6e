"""Run untrusted, model-written PyTorch code in a separate, confined process.

The candidate source is never executed in the calling process. It runs in a forked child of a
sandboxed "zygote" worker (see `_worker.py`) that has torch imported already; the child applies
per-job rlimits and an audit-hook policy before the source is compiled. The worker itself is
confined by bubblewrap where that works (private mount, pid, net, ipc and uts namespaces; a
dedicated uid when we are root) and by rlimits, a dedicated uid (when root), a private network
namespace (when root) and the audit hook otherwise. See docs/sandbox.md for guarantees and limits.

Example
-------
>>> out = run_code("import torch.nn as nn\\nclass Net(nn.Sequential):\\n"
...                "    def __init__(self):\\n        super().__init__(nn.Flatten(),"
...                " nn.Linear(3072, 10))\\n")  # doctest: +SKIP
>>> out.status, out.params  # doctest: +SKIP
('ok', 30730)
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

    from archrefine.evaluate.pool import SandboxPool

__all__ = ["Outcome", "SandboxError", "SandboxPool", "TrainSpec", "isolation_level", "run_code"]

STATUSES = ("ok", "invalid", "timeout", "crashed", "oom", "forbidden")
Isolation = Literal["auto", "bwrap", "rlimits"]
WORKER = Path(__file__).with_name("_worker.py")
MARKER = "archrefine-sandbox-worker"
INSIDE = "/sandbox"  # where the worker, inputs and scratch space appear inside bwrap
UID_BASE = 2_000_000  # dedicated uids for sandboxed workers when we are root (never real users)
ENV_FORCE = "ARCHREFINE_SANDBOX"  # "rlimits" forces the fallback for isolation="auto"
_uid_counter = itertools.count()


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the candidate), e.g. a worker could not start."""


@dataclass(frozen=True)
class TrainSpec:
    """How the child trains a valid candidate before reporting held-out accuracy."""

    epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0
    optimizer: Literal["adam", "sgd"] = "adam"

    def __post_init__(self) -> None:
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ValueError(f"train.epochs: {self.epochs!r} is not an integer >= 1")
        if not self.lr > 0:
            raise ValueError(f"train.lr: {self.lr!r} is not > 0")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"train.batch_size: {self.batch_size!r} is not an integer >= 1")
        if not isinstance(self.seed, int):
            raise ValueError(f"train.seed: {self.seed!r} is not an integer")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"train.optimizer: {self.optimizer!r} is not one of adam, sgd")


@dataclass(frozen=True)
class Outcome:
    """What happened to one candidate; `reason` is a single line of at most 200 characters.

    `seconds` is the wall time of the job itself (worker start-up excluded); `log` is the tail of
    the candidate's own stdout/stderr (tracebacks of invalid candidates land there).
    """

    status: Literal["ok", "invalid", "timeout", "crashed", "oom", "forbidden"]
    reason: str
    params: int | None
    accuracy: float | None
    seconds: float
    isolation: str
    log: str = ""


def isolation_level(isolation: Isolation = "auto", *, audit: bool = True) -> str:
    """The isolation that `run_code(..., isolation=isolation, audit=audit)` would get here.

    One of "bwrap+audit", "bwrap", "rlimits+audit", "rlimits"; record it with a run's metadata.
    Raises SandboxError when `isolation="bwrap"` is asked for and bwrap does not work here.
    """
    return _resolve(isolation) + ("+audit" if audit else "")


def run_code(
    source: str,
    *,
    timeout_s: float = 30,
    memory_mb: int = 2048,
    input_shape: tuple[int, ...] = (3, 32, 32),
    classes: int = 10,
    batch: int = 2,
    train: TrainSpec | None = None,
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    isolation: Isolation = "auto",
    audit: bool = True,
) -> Outcome:
    """Build `Net()` from `source` in a fresh sandbox, check its forward pass, optionally train it.

    Parameters
    ----------
    source : Python text defining ``class Net(nn.Module)`` constructible with no arguments.
    timeout_s : wall-clock limit for the job (worker start-up not included); CPU limit is ~equal.
    memory_mb : address space the candidate may add on top of the interpreter with torch loaded.
    input_shape, classes, batch : the dummy batch is ``(batch, *input_shape)`` and the output
        must have shape ``(batch, classes)``.
    train, data : with both, train on ``data = (X, y, X_val, y_val)`` per `train` and report
        accuracy on the held-out part; ``y_val`` never enters the sandbox.
    isolation : "auto" (bwrap if it works, else rlimits), "bwrap" or "rlimits".
    audit : install the audit-hook policy in the child (turn off only to test the OS layer).

    Each call starts and stops its own worker (~2 s to import torch); for many candidates use
    `SandboxPool`, which keeps workers warm.
    """
    from archrefine.evaluate.pool import SandboxPool

    opts = dict(input_shape=input_shape, classes=classes, batch=batch, train=train, data=data)
    job_options(timeout_s=timeout_s, memory_mb=memory_mb, **opts)  # fail before starting a worker
    with SandboxPool(
        1, timeout_s=timeout_s, memory_mb=memory_mb, isolation=isolation, audit=audit
    ) as pool:
        return pool.run(source, **opts)


def __getattr__(name: str) -> Any:  # SandboxPool lives in pool.py, which imports this module
    if name == "SandboxPool":
        from archrefine.evaluate.pool import SandboxPool

        return SandboxPool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- shared with pool.py: job options, outcomes, how workers are launched -----------------------


def one_line(text: object, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def job_options(
    *,
    timeout_s: float,
    memory_mb: int,
    input_shape: Sequence[int] = (3, 32, 32),
    classes: int = 10,
    batch: int = 2,
    train: TrainSpec | None = None,
    data: object = None,
    audit: bool = True,
) -> dict[str, Any]:
    """Validate one job's options (messages name the parameter) and return them as sent."""
    if not (isinstance(timeout_s, int | float) and 0 < timeout_s <= 86400):
        raise ValueError(f"timeout_s: {timeout_s!r} is not a number of seconds in (0, 86400]")
    if not (isinstance(memory_mb, int) and memory_mb >= 16):
        raise ValueError(f"memory_mb: {memory_mb!r} is not an integer >= 16")
    shape = tuple(input_shape)
    if not (shape and all(isinstance(d, int) and d >= 1 for d in shape)):
        raise ValueError(f"input_shape: {input_shape!r} is not a tuple of positive integers")
    for name, value in (("classes", classes), ("batch", batch)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name}: {value!r} is not an integer >= 1")
    if (train is None) != (data is None):
        raise ValueError("train and data: give both (to train) or neither")
    if train is not None and not isinstance(train, TrainSpec):
        raise ValueError(f"train: expected a TrainSpec, got {type(train).__name__}")
    spec = {"epochs", "lr", "batch_size", "seed", "optimizer"}
    return dict(
        input_shape=shape, classes=classes, batch=batch, audit=bool(audit), timeout_s=timeout_s,
        memory_mb=memory_mb, data=None, train=train and {k: getattr(train, k) for k in spec},
    )  # fmt: skip


def make_outcome(reply: dict, y_val: Any, started: float, isolation: str) -> Outcome:
    """Validate a worker's (untrusted) reply; score its predictions against labels kept here."""
    status, reason = reply.get("status"), one_line(reply.get("reason", ""))
    if status not in STATUSES:
        status, reason = "crashed", "crashed: malformed result from the sandbox"
    params, preds, accuracy = reply.get("params"), reply.get("preds"), None
    if status == "ok" and y_val is not None:
        labels = list(y_val)
        if isinstance(preds, list) and len(preds) == len(labels) > 0:
            hits = [isinstance(p, int) and p == t for p, t in zip(preds, labels, strict=True)]
            accuracy = sum(hits) / len(hits) if all(isinstance(p, int) for p in preds) else None
        if accuracy is None:
            status, reason = "crashed", "crashed: malformed predictions from the sandbox"
    ok = status == "ok" and isinstance(params, int) and params >= 0
    log = reply.get("log")
    return Outcome(status, reason, params if ok else None, accuracy,
                   round(time.monotonic() - started, 4), isolation,
                   log[-2000:] if isinstance(log, str) else "")  # fmt: skip


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


@dataclass(frozen=True)
class Launch:
    """Everything needed to start one worker: argv, environment and the paths it sees."""

    argv: list[str]
    env: dict[str, str]
    inputs: str  # the host's input directory as the worker sees it
    uid: int | None  # dedicated uid when we are root, so the host can sweep its processes
    name: str  # distinguishes the worker's files in the pool directory


def _resolve(isolation: str) -> str:
    if isolation not in ("auto", "bwrap", "rlimits"):
        raise ValueError(f"isolation: {isolation!r} is not one of auto, bwrap, rlimits")
    if isolation == "auto":
        forced = os.environ.get(ENV_FORCE, "")
        if forced not in ("", "auto", "bwrap", "rlimits"):
            raise ValueError(f"{ENV_FORCE}: {forced!r} is not one of auto, bwrap, rlimits")
        isolation = forced if forced in ("bwrap", "rlimits") else "auto"
    problem = _bwrap_problem() if isolation != "rlimits" else "not asked for"
    if isolation == "bwrap" and problem:
        raise SandboxError(f"isolation='bwrap' unavailable: {problem}")
    return "bwrap" if not problem else "rlimits"


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


def _bwrap_prefix(inputs: str, as_root: bool, disable_userns: bool) -> list[str]:
    """bwrap options: read-only system and Python, private /tmp, /proc, /dev; no network."""
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
    # /tmp first: Python may live under /tmp (a CI clone), and later binds must sit on top
    args += str.split(f"--proc /proc --dev /dev --size {64 << 20} --perms 1777 --tmpfs /tmp")
    binds = [p for p in _outermost(system + _python()[1]) if p not in system]
    made: set[str] = set()
    for p in binds:
        parents = Path(p).parents
        for anc in reversed([str(a) for a in parents if str(a) != "/"]):
            if anc not in made and anc not in system:
                args += ["--perms", "0755", "--dir", anc]
                made.add(anc)
        args += ["--ro-bind", p, p]
    args += str.split(  # sizes cap what a candidate can park in memory-backed files
        f"--size {256 << 20} --perms 0777 --tmpfs {INSIDE}/work --chdir {INSIDE}/work"
    )
    args += ["--ro-bind", str(WORKER), f"{INSIDE}/_worker.py", "--ro-bind", inputs, f"{INSIDE}/in"]
    for key, value in _env(f"{INSIDE}/work").items():
        args += ["--setenv", key, value]
    return args + ["--"]


@functools.cache
def _bwrap_config() -> tuple[bool, str]:
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


def _bwrap_problem() -> str:
    return _bwrap_config()[1]


def launch(mode: str, root: Path, index: int) -> Launch:
    """How to start worker `index` of a pool whose host directory is `root` (inputs in root/in)."""
    as_root = os.geteuid() == 0
    uid = UID_BASE + (os.getpid() % 16384) * 4096 + next(_uid_counter) % 4096 if as_root else None
    exe = _python()[0]
    cfg: dict[str, Any] = {"uid": uid, "gid": uid, "path": _site_dirs()}
    if mode == "bwrap":
        cfg.update(workroot=f"{INSIDE}/work", chown=False, unshare_net=False)
        argv = _bwrap_prefix(str(root / "in"), as_root, _bwrap_config()[0])
        argv += [exe, "-s", "-B", f"{INSIDE}/_worker.py", MARKER, json.dumps(cfg)]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        return Launch(argv, env, f"{INSIDE}/in", uid, str(index))
    work = root / f"work-{index}"
    work.mkdir(mode=0o700)
    cfg.update(workroot=str(work), chown=as_root, unshare_net=as_root)
    argv = [exe, "-s", "-B", str(WORKER), MARKER, json.dumps(cfg)]
    return Launch(argv, _env(str(work)), str(root / "in"), uid, str(index))
