"""A pool of warm sandbox workers, so validating a candidate costs a fork, not a torch import.

Each worker is a confined zygote (see `_worker.py`) that never runs candidate code itself: every
job runs in a freshly forked child, which the worker SIGKILLs with all its descendants at the
job's deadline or end, whatever the outcome. After each job the worker checks that nothing it
depends on changed (its limits, parent, work area) and otherwise asks to be replaced. The host
holds the held-out labels, scores predictions, validates every reply, caps each worker's memory
cgroup per job (when root) and, should a worker not answer half a second after a deadline, die,
or answer nonsense, kills its whole process group, cgroup and uid and starts a fresh one.

Over 400 lines because spawning, dispatching, reaping and replacing workers are one state
machine over the same worker records; split, each half would need the other's internals.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from archrefine.sandbox import confine
from archrefine.sandbox._worker_os import remove_tree
from archrefine.sandbox.jobs import (
    REPLY_CAP,
    Isolation,
    Launch,
    Outcome,
    SandboxError,
    TrainSpec,
    job_options,
    kill_uid,
    launch,
    make_outcome,
    one_line,
    parse_reply,
    resolve_isolation,
    warn_unfiltered,
)

MAX_SOURCE = 1 << 20  # characters of candidate source accepted
GRACE_S = 0.5  # the worker ends a job at its deadline; we kill the worker this much later
SLACK = 64 << 20  # bytes of cgroup headroom over usage + memory_mb (page cache, our own pipes)
OOM_SCORE_ADJ = 1000  # jobs die first when the machine runs out of memory; at 0 the kernel
# picks the largest process, often the host (a loaded generator), while a job without a memory
# cgroup may hold 32 processes of memory_mb each
Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass
class _Job:
    index: int
    spec: dict[str, Any]
    y_val: list | None  # labels of the held-out set: they never enter the sandbox
    started: float = 0.0
    deadline: float = math.inf
    oom_kills: int = 0


class _Worker:
    """One sandboxed zygote process and the host's view of it."""

    def __init__(self, spec: Launch, root: Path, startup_timeout_s: float) -> None:
        self.spec, self.buf = spec, bytearray()
        self.cgroup, self.cpu, self.base, self.limit = None, None, 0, 0
        argv = spec.argv
        self.cgroup = self._new_cgroup("memory", confine.new_cgroup)
        self.cpu = self._new_cgroup("cpu", confine.new_cpu_cgroup)
        joins = [c.procs for c in self.cgroups]
        # the shell makes the worker (and so every job) the machine's OOM killer's first choice
        # (as root also the floor: no job can lower it), joins the cgroups, becomes the worker
        script = "".join(f'echo $$ > "${i}" && ' for i in range(1, len(joins) + 1))
        argv = ["/bin/sh", "-c", f"{{ echo {OOM_SCORE_ADJ} > /proc/self/oom_score_adj; }} "
                f'2>/dev/null; {script}shift {len(joins)} && exec "$@"', "sh", *joins,
                *argv]  # fmt: skip
        self.errlog = open(root / f"worker-{spec.name}.err", "a+b")  # noqa: SIM115 - lives with us
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errlog,
            env=spec.env,
            start_new_session=True,
            close_fds=True,
            cwd=root,
        )
        self.fd = self.proc.stdout.fileno()
        self.ready = False
        self.deadline = time.monotonic() + startup_timeout_s
        self.job: _Job | None = None

    def startup_error(self) -> str:
        self.errlog.seek(0, os.SEEK_END)
        self.errlog.seek(max(0, self.errlog.tell() - 2000))
        lines = self.errlog.read().decode("utf-8", "replace").strip().splitlines()
        return one_line(lines[-1] if lines else f"exit code {self.proc.poll()}", 150)

    def kill(self) -> None:
        """SIGKILL the worker's whole process group and wait until none of it is left."""
        deadline = time.monotonic() + 5
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        while time.monotonic() < deadline:  # processes that left the group but kept the uid
            left = kill_uid(self.spec.uid) if self.spec.uid is not None else 0
            left += self.kill_cgroup()
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                if not left:
                    break
            time.sleep(0.01)
        for f in (self.proc.stdin, self.proc.stdout, self.errlog):
            with contextlib.suppress(OSError):
                f.close()
        self.remove_cgroups()

    @property
    def cgroups(self) -> list[confine.Cgroup]:
        """The worker's memory and cpu cgroups, those it has."""
        return [c for c in (self.cgroup, self.cpu) if c is not None]

    def _new_cgroup(
        self, what: str, make: Callable[[str], confine.Cgroup | None]
    ) -> confine.Cgroup | None:
        try:
            return make(self.spec.name)
        except OSError as err:
            self.remove_cgroups()  # the memory cgroup, when the cpu one cannot be made
            raise SandboxError(f"cannot create a {what} cgroup for a worker: {err}") from None

    def remove_cgroups(self) -> None:
        for cgroup in self.cgroups:
            cgroup.remove()

    def kill_cgroup(self) -> int:
        """SIGKILL whatever is left in the worker's cgroups; return how many there were."""
        pids: set[str] = set()
        for cgroup in self.cgroups:
            with contextlib.suppress(OSError):
                pids.update(Path(cgroup.procs).read_text().split())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        return len(pids)

    def limit_memory(self, memory_mb: int) -> None:
        """Cap the worker's cgroup at its warm usage + `memory_mb` (+ slack) for the next job."""
        if self.cgroup is None:
            return
        try:
            if not self.base:
                self.base = self.cgroup.usage()
            limit = self.base + (memory_mb << 20) + SLACK
            if limit != self.limit:
                self.cgroup.set_limit(limit)
                self.limit = limit
        except (OSError, ValueError) as err:
            raise SandboxError(f"cannot limit a worker's memory cgroup: {err}") from None

    def oom_kills(self) -> int:
        if self.cgroup is None:
            return 0
        with contextlib.suppress(OSError, ValueError):
            return self.cgroup.oom_kills()
        return 0


class SandboxPool:
    """Warm sandbox workers evaluating candidates in parallel, each job under its own limits.

    Parameters
    ----------
    workers : number of worker processes (one job each at a time).
    timeout_s, memory_mb : default per-job limits (see `run_code`); `run`/`map` may override.
    isolation : "auto", "bwrap" or "rlimits"; `audit` turns the audit-hook policy on or off.
    startup_timeout_s : how long a worker may take to start (import torch) before SandboxError.
    gpus : bind the GPUs' device nodes into every worker's /dev and build and train every
        candidate on CUDA (`evaluate.gpus_per_task > 0`); `memory_mb` then bounds each job's
        host memory through its cgroup (CUDA cannot start under `RLIMIT_AS`) and its GPU
        memory through torch's allocator. SandboxError where this machine has no GPU or no
        memory cgroup for the workers.

    Example
    -------
    >>> with SandboxPool(workers=2, timeout_s=5) as pool:  # doctest: +SKIP
    ...     outcomes = pool.map(sources)
    """

    def __init__(
        self,
        workers: int = 2,
        *,
        timeout_s: float = 30,
        memory_mb: int = 2048,
        isolation: Isolation = "auto",
        audit: bool = True,
        startup_timeout_s: float = 120,
        gpus: bool = False,
    ) -> None:
        if not (isinstance(workers, int) and workers >= 1):
            raise ValueError(f"workers: {workers!r} is not an integer >= 1")
        job_options(timeout_s=timeout_s, memory_mb=memory_mb)  # validates the defaults
        self.timeout_s, self.memory_mb, self.audit = timeout_s, memory_mb, bool(audit)
        self.mode = resolve_isolation(isolation)
        self.devices = confine.gpu_devices() if gpus else []
        if gpus and not self.devices:
            raise SandboxError("gpus: no NVIDIA device nodes (/dev/nvidia0, ...) on this machine")
        self.isolation = self.mode + ("+audit" if audit else "")
        self.syscall_filter = ""  # "seccomp" once a worker runs, or why its jobs have none
        # "cgroup": memory_mb caps each job as a whole; "process": each of its processes
        problem = confine.cgroup_problem()
        self.memory_scope = "process" if problem else "cgroup"
        # "worker": each worker's jobs share one cpu weight; "process": the kernel's own sharing
        self.cpu_share = "process" if confine.cpu_problem() else "worker"
        if gpus and problem:  # CUDA cannot start under the per-process RLIMIT_AS
            raise SandboxError(
                f"gpus: jobs on a GPU need a memory cgroup to bound their memory ({problem}; "
                "run as root on a machine with a writable cgroup)"
            )
        self._startup, self._size = startup_timeout_s, workers
        _sweep_stale_roots()
        self._root = Path(tempfile.mkdtemp(prefix=f"archrefine-sandbox-{os.getpid()}-"))
        self._root.chmod(0o711)
        (self._root / "in").mkdir(mode=0o755)
        self._ids, self._lock, self._data = itertools.count(), threading.Lock(), set()
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._root)
        self._top_up()

    def _top_up(self) -> None:
        while len(self._workers) < self._size:
            self._workers.append(self._spawn())

    def _spawn(self) -> _Worker:
        index = next(self._ids)
        spec = launch(self.mode, self._root, index, self.devices)
        return _Worker(spec, self._root, self._startup)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill every worker and remove the pool's temporary directory."""
        self._finalizer()

    def run(self, source: str, **options: Any) -> Outcome:
        """Evaluate one candidate; `options` as for `map`."""
        return self.map([source], **options)[0]

    def map(
        self,
        sources: Iterable[str],
        *,
        timeout_s: float | None = None,
        memory_mb: int | None = None,
        input_shape: Sequence[int] = (3, 32, 32),
        classes: int = 10,
        batch: int = 2,
        train: TrainSpec | None = None,
        data: Data | None = None,
    ) -> list[Outcome]:
        """Evaluate candidates in parallel; outcomes come back in the order of `sources`."""
        if not self._finalizer.alive:
            raise SandboxError("the pool is closed")
        base = job_options(
            timeout_s=self.timeout_s if timeout_s is None else timeout_s,
            memory_mb=self.memory_mb if memory_mb is None else memory_mb,
            input_shape=input_shape,
            classes=classes,
            batch=batch,
            train=train,
            data=data,
            audit=self.audit,
            device="cuda" if self.devices else "cpu",
        )
        y_val = None
        with self._lock:
            self._top_up()  # after a worker failed to start, try again
            if train is not None:
                base["data"], y_val = self._store_data(data), np.asarray(data[3]).tolist()
            jobs = [_Job(i, dict(base, src=s), y_val) for i, s in enumerate(sources)]
            return self._run_all(jobs)

    def _store_data(self, data: Data) -> str:
        """Write (x, y, x_val) once per distinct dataset; y_val stays here to score predictions.
        Only the dataset of the current call stays in the inputs every job can read: an earlier
        call's file of another split held labels of this split's held-out images."""
        if not (isinstance(data, tuple | list) and len(data) == 4):
            raise ValueError("data: expected a tuple (X, y, X_val, y_val) of numpy arrays")
        x, y, x_val, y_val = (np.ascontiguousarray(a) for a in data)
        if len(x) != len(y) or len(x_val) != len(y_val) or x.shape[1:] != x_val.shape[1:]:
            raise ValueError("data: X/y or X_val/y_val lengths differ, or X and X_val shapes do")
        if not (len(x) and len(x_val)):
            raise ValueError("data: X and X_val must not be empty")
        digest = hashlib.sha1()
        for a in (x, y, x_val):
            digest.update(f"{a.dtype}{a.shape}".encode())
            digest.update(a.tobytes())
        name = f"data-{digest.hexdigest()[:16]}.npz"
        if name not in self._data:  # written atomically: a worker never sees half a file
            tmp = self._root / "in" / f".{name}"
            with open(tmp, "wb") as f:
                np.savez(
                    f, x=x.astype(np.float32), y=y.astype(np.int64), x_val=x_val.astype(np.float32)
                )
            tmp.chmod(0o644)
            tmp.rename(self._root / "in" / name)
        for old in self._data - {name}:  # another split's training labels may be this one's
            with contextlib.suppress(OSError):  # answers (1.00 by lookup): only one is readable
                (self._root / "in" / old).unlink()
        self._data = {name}
        return name

    def _run_all(self, jobs: list[_Job]) -> list[Outcome]:
        results: list = [None] * len(jobs)
        for job in jobs:  # reject what cannot be a source without bothering a worker
            src = job.spec["src"]
            if not isinstance(src, str) or len(src) > MAX_SOURCE:
                what = f"{len(src)} characters" if isinstance(src, str) else type(src).__name__
                why = f"invalid: source must be a str of <= {MAX_SOURCE} characters, got {what}"
                results[job.index] = Outcome("invalid", why, None, None, 0.0, self.isolation)
        pending = deque(j for j in jobs if results[j.index] is None)
        try:
            while pending or any(w.job for w in self._workers):
                self._step(pending, results)
        except BaseException:  # leave no worker holding a job of this call
            for w in list(self._workers):
                if w.job:
                    w.job = None
                    self._replace(w)
            raise
        return results

    def _step(self, pending: deque, results: list) -> None:
        """Dispatch to idle workers, wait for the next reply or deadline, handle what happened."""
        for w in list(self._workers):
            if w.ready and w.job is None and pending:
                if w.proc.poll() is None:
                    self._dispatch(w, pending.popleft())
                else:  # died while idle: nobody's job is lost
                    self._replace(w)
        now = time.monotonic()
        waiting = [w for w in self._workers if not w.ready or w.job]
        limit = min([w.job.deadline if w.job else w.deadline for w in waiting] or [now + 1])
        poller = select.poll()  # not select(): the caller may hold more than 1024 descriptors
        for w in waiting:
            poller.register(w.fd, select.POLLIN)
        readable = {fd for fd, _ in poller.poll(max(0, limit - now) * 1000)}
        for w in waiting:
            if w.fd in readable and w in self._workers:
                self._read(w, results)
        now = time.monotonic()
        for w in list(self._workers):
            if w.job and now >= w.job.deadline:
                reason = f"timeout: exceeded {w.job.spec['timeout_s']:g} s wall clock"
                self._finish(w, results, {"status": "timeout", "reason": reason}, kill=True)
            elif not w.ready and now >= w.deadline:
                self._drop(w)
                raise SandboxError(f"sandbox worker did not start within {self._startup:g} s")

    def _dispatch(self, w: _Worker, job: _Job) -> None:
        job_id = next(self._ids)
        spec = dict(job.spec)
        path = self._root / "in" / f"job-{job_id}.py"
        path.write_text(spec.pop("src"), encoding="utf-8", errors="replace")
        path.chmod(0o644)
        spec.update(id=job_id, source=f"{w.spec.inputs}/{path.name}")
        spec["n_val"] = len(job.y_val) if job.y_val is not None else 0
        if spec["data"]:
            spec["data"] = f"{w.spec.inputs}/{spec['data']}"
        w.limit_memory(int(spec["memory_mb"]))
        job.oom_kills = w.oom_kills()
        job.spec, job.started = spec, time.monotonic()
        job.deadline = job.started + float(spec["timeout_s"]) + GRACE_S
        w.job = job
        try:
            w.proc.stdin.write(json.dumps(spec).encode() + b"\n")
            w.proc.stdin.flush()
        except OSError:  # died between jobs; its EOF is handled by _read
            pass

    def _read(self, w: _Worker, results: list) -> None:
        n_val = len(w.job.y_val) if w.job and w.job.y_val is not None else 0
        cap = REPLY_CAP + 16 * n_val
        chunk = os.read(w.fd, 1 << 20) if len(w.buf) <= cap else b""
        if not chunk:  # EOF (or an oversized reply): the worker is gone or misbehaving
            if not w.ready:
                why = w.startup_error()
                self._drop(w)
                raise SandboxError(f"sandbox worker failed to start ({self.mode}): {why}")
            if w.job:
                why = "crashed: sandbox worker died during the job"
                return self._finish(w, results, {"status": "crashed", "reason": why}, kill=True)
            return self._replace(w)
        w.buf += chunk
        while b"\n" in w.buf:
            line, _, rest = bytes(w.buf).partition(b"\n")
            w.buf = bytearray(rest)
            reply = parse_reply(line, cap)
            if reply is None:
                why = "crashed: unreadable reply from the sandbox worker"
                reply = {"status": "crashed", "reason": why, "dirty": True}
            if not w.ready:
                w.ready = reply.get("ready") is True
                self._filtered(reply.get("filter"))
            elif w.job:
                self._finish(w, results, reply)

    def _filtered(self, why: object) -> None:
        """Note whether the worker's jobs run under the seccomp filter (`_worker_os.
        job_filters`); warn once where they do not."""
        self.syscall_filter = "seccomp" if why == "" else f"none ({str(why)[:200]})"
        if why != "":
            warn_unfiltered(str(why)[:200])

    def _finish(self, w: _Worker, results: list, reply: dict, kill: bool = False) -> None:
        job, w.job = w.job, None
        with contextlib.suppress(OSError):
            os.unlink(self._root / "in" / Path(job.spec["source"]).name)
        if w.oom_kills() > job.oom_kills:  # the kernel killed one of the job's processes
            mb = job.spec["memory_mb"]
            why = f"oom: the job's processes together exceeded {mb} MB (memory cgroup)"
            reply = dict(reply, status="oom", reason=why)
        elif reply.get("sigkill") is True and w.cgroup is not None:
            # the cgroup counts every OOM kill of its processes (its own limit's or the
            # machine's): a SIGKILL it did not count is the job's own doing, or another's
            why = "crashed: killed by SIGKILL (no OOM kill in the job's memory cgroup)"
            reply = dict(reply, status="crashed", reason=why)
        results[job.index] = make_outcome(
            reply, job.y_val, job.started, self.isolation, job.spec["classes"]
        )
        if kill or reply.get("dirty") is not False:
            self._replace(w)

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers[self._workers.index(w)] = self._spawn()

    def _drop(self, w: _Worker) -> None:
        w.kill()
        self._workers.remove(w)


def _sweep_stale_roots(idle_s: float = 600) -> None:
    """Remove pool directories (inputs: training data, candidates' sources) left by processes
    that died without closing their pool (kill -9): named by the pid, idle for `idle_s`."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(tempfile.gettempdir()):
            match = re.fullmatch(r"archrefine-sandbox-(\d+)-\w+", entry.name)
            if not match or os.path.exists(f"/proc/{match.group(1)}"):
                continue
            with contextlib.suppress(OSError):
                if time.time() - os.stat(os.path.join(entry.path, "in")).st_mtime > idle_s:
                    _shutdown([], Path(entry.path))


def _shutdown(workers: list[_Worker], root: Path) -> None:
    for w in workers:
        w.kill()
    try:  # work directories on the host (the fallback without namespaces) hold what jobs made
        shutil.rmtree(root, ignore_errors=True)
    except RecursionError:  # a tree thousands of levels deep: never an exception in the caller
        remove_tree(str(root))
