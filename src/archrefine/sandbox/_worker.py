"""The sandboxed side of `archrefine.sandbox.sandbox`: a warm zygote forking one child per job.

Run only by the sandbox (``python -s -B _worker.py archrefine-sandbox-worker CONFIG_JSON``), never
imported by the library. The zygote imports torch once, drops to an unprivileged uid when started
as root, makes itself non-dumpable (so a job cannot ptrace it or open its pipes through /proc) and
a child subreaper (so no process a job starts can escape the cleanup), then serves jobs: one JSON
line in on stdin, one JSON line out on stdout. Untrusted code runs only in the forked child, after
that child has applied the job's rlimits and (optionally) the audit-hook policy. The zygote is the
trusted harness: it holds the only channel to the host, gives the child just its own pipe, kills
the child and all it started at the deadline, accepts only a flat, bounded report from it, and
after each job compares its own state with a snapshot (`_worker_os._snapshot`), exiting if a job
changed it. Depends on the standard library, numpy and torch only.

Over 400 lines because it is run by path inside the sandbox, where it stands alone: only
`_worker_os.py` is bound beside it, and it imports nothing of archrefine.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import math
import os
import random
import resource
import secrets
import select
import signal
import sys
import time
import traceback

from _worker_os import (  # the sibling file, bound next to this one
    _count_my_tasks,
    _drop_keys,
    _libc,
    _log_tail,
    _own_keyring,
    _prctl,
    _private_view,
    _reap_all,
    _safe_json,
    _snapshot,
    _work_full,
    job_filters,
    remove_tree,
)

MARKER = "archrefine-sandbox-worker"
RESULT_CAP = 64 << 10  # bytes of a child's report, besides 16 per held-out prediction
LOG_TAIL = 2000  # characters of the candidate's stdout/stderr kept
FSIZE = 16 << 20  # largest file a candidate may write (its stdout log included)
LIFTS = ("_cuda_setMemoryFraction", "_accelerator_setAllocatorSettings",
         "_cuda_cudaCachingAllocator_set_allocator_settings")  # fmt: skip
"""torch's ways to change the allocator's memory fraction (directly, or as a setting)."""
EXTRA_TASKS = 32  # processes/threads a candidate may add (RLIMIT_NPROC headroom)
PROCESS_EVENTS = tuple(
    str.split(
        "os.system os.exec os.posix_spawn os.spawn os.fork os.forkpty subprocess.Popen "
        "pty.spawn os.kill os.killpg signal.pthread_kill"
    )
)
PATH_EVENTS = frozenset(  # events whose path arguments must stay inside the work directory
    str.split(
        "os.remove os.rmdir os.rename os.mkdir os.chmod os.chown os.truncate os.utime shutil.rmtree"
    )
)
PRELOAD = str.split(  # imported before the uid drop, after which the stdlib may be unreadable
    "abc collections collections.abc contextlib copy dataclasses enum functools inspect "
    "itertools math numbers operator random re socket encodings.idna encodings.ascii "
    "encodings.latin_1 statistics string textwrap types typing warnings torch.nn.functional "
    "torch.nn.init torch.nn.utils torch.utils.data torch.optim.lr_scheduler zipfile "
    "encodings.cp437 numpy.lib.format"
)


def _warm_up(gpu: bool) -> None:
    """Import torch and run one tiny train step so lazy initialisation happens once, here;
    for GPU jobs without the backward pass, whose autograd engine asks CUDA for its devices,
    which poisons every forked child's CUDA ("Cannot re-initialize CUDA in forked
    subprocess"): each child starts CUDA, and the engine, itself."""
    import numpy  # noqa: F401
    import torch
    from torch import nn

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)
    )
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(2, 3, 8, 8)[torch.randperm(2, generator=torch.Generator().manual_seed(0))]
    if not gpu:
        nn.functional.cross_entropy(net(x), torch.zeros(2).long()).backward()
        opt.step()
    with torch.no_grad():
        net.eval()(x).argmax(1)
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            __import__(name)


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Refused(PermissionError):
    """Raised by the audit hook; its class name lets the classifier say "forbidden"."""


class _Invalid(Exception):
    """The candidate ran but is not a usable network (no Net, wrong output shape)."""


def _install_policy(workdir: str) -> list[str]:
    """Refuse network, process creation, ctypes and writes outside `workdir`; log every refusal.

    A policy layer, not a security boundary: CPython audit hooks can be bypassed (e.g. through
    already-imported C modules). The OS layer (bwrap, uid, rlimits) is what actually contains.
    """
    refusals: list[str] = []
    root = os.path.realpath(workdir)

    def inside(path: object) -> bool:
        if isinstance(path, int):
            return True  # an already-open descriptor
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        full = os.path.realpath(os.path.join(root, str(path)))
        return full in (root, os.devnull) or full.startswith(root + os.sep)

    def refuse(what: str) -> None:
        refusals.append(what)
        raise Refused(errno.EPERM, f"{what} refused by sandbox")

    def hook(event: str, args: tuple) -> None:
        if event.startswith("socket."):
            refuse(f"network access ({event})")
        elif event.startswith(PROCESS_EVENTS):
            refuse(f"process control ({event})")
        elif event.startswith("ctypes."):
            refuse(f"ctypes ({event})")
        elif event in ("os.symlink", "os.link"):
            refuse(f"link creation ({event})")
        elif event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
            if writes and path is not None and not inside(path):
                refuse(f"writing {_one_line(path, 80)}")
        elif event in PATH_EVENTS:
            for arg in args:
                if isinstance(arg, str | bytes | os.PathLike) and not inside(arg):
                    refuse(f"{event} on {_one_line(arg, 80)}")

    sys.addaudithook(hook)
    return refusals


def _classify(exc: BaseException, stage: str) -> tuple[str, str]:
    """Map an exception raised by candidate code to (status, one-line reason)."""
    name = type(exc).__name__
    msg = _one_line(f"{name}: {exc}" if str(exc) else name, 160)
    oom_words = ("can't allocate memory", "Cannot allocate", "out of memory")
    if isinstance(exc, MemoryError) or any(w in str(exc) for w in oom_words):
        return "oom", f"oom: {msg} (in {stage})"
    if stage == "loading":  # our side, before any candidate code ran
        return "crashed", f"crashed: the sandbox could not load the job data: {msg}"
    if stage == "cuda":
        return "crashed", f"crashed: the sandbox could not start CUDA: {msg}"
    if isinstance(exc, SyntaxError):
        return "invalid", f"invalid: SyntaxError line {exc.lineno}: {_one_line(exc.msg, 150)}"
    if isinstance(exc, Refused):
        return "forbidden", f"forbidden: {exc.strerror}"
    if isinstance(exc, OSError):
        code = exc.errno
        if code == errno.ENOSPC:
            return "crashed", "crashed: work directory full"
        if code == errno.EFBIG:
            return "forbidden", f"forbidden: file size limit of {FSIZE >> 20} MB exceeded"
        if code == errno.EAGAIN:
            return "forbidden", f"forbidden: process limit reached ({msg})"
        if code == errno.EMFILE:
            return "forbidden", "forbidden: open-file limit reached"
        net = (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL,
               errno.EAFNOSUPPORT)  # the last: a socket the seccomp filter refused  # fmt: skip
        if isinstance(exc, ConnectionError) or code in net or "gaierror" in name:
            return "forbidden", f"forbidden: network unavailable in sandbox ({msg})"
        if code in (errno.EACCES, errno.EPERM, errno.EROFS):
            return "forbidden", f"forbidden: blocked by sandbox ({msg})"
    if isinstance(exc, SystemExit):
        return "invalid", f"invalid: candidate called sys.exit({_one_line(exc.code, 40)})"
    return "invalid", f"invalid: {msg} (in {stage})"


def _evaluate(job: dict, result: dict) -> None:
    """Compile, build, check the forward shape, count parameters and train, or (without
    training) check one training step: a forward in train mode and one backward."""
    import numpy as np
    import torch
    from torch import nn

    stage, refusals = "compile", []
    try:
        with open(job["source"], encoding="utf-8") as f:
            code = compile(f.read(), "<candidate>", "exec")
        stage, data = "loading", None
        if job.get("data"):
            with np.load(job["data"], allow_pickle=False) as z:
                data = {k: z[k] for k in ("x", "y", "x_val")}
        seed = int((job.get("train") or {}).get("seed", 0))
        torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed costs ~8 ms
        random.seed(seed)  # reseeded from the OS at every fork: a candidate using it varied
        np.random.seed(seed % 2**32)  # noqa: NPY002 - the global one candidates use; it was
        # seeded from the OS when the worker started, so it too varied between workers
        device = torch.device("cuda" if job.get("device") == "cuda" else "cpu")
        if device.type == "cuda":  # memory_mb of the GPU too, in torch's allocator,
            stage = "cuda"  # whose setters then go: a candidate cannot lift it through torch
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, (job["memory_mb"] << 20) / total))
            for setter in LIFTS:
                with contextlib.suppress(AttributeError):
                    delattr(torch._C, setter)
        if job.get("audit", True):
            refusals = _install_policy(os.getcwd())
        stage = "module body"
        namespace: dict = {"__name__": "__candidate__", "__builtins__": __builtins__}
        exec(code, namespace)  # the untrusted code runs here, in the sandboxed child only
        net_cls = namespace.get("Net")
        if not (isinstance(net_cls, type) and issubclass(net_cls, nn.Module)):
            raise _Invalid("source defines no class Net(nn.Module)")
        stage = "Net()"
        net = net_cls().to(device)
        stage = "forward"
        batch, classes = int(job["batch"]), int(job["classes"])
        net.eval()
        with torch.no_grad():
            out = net(torch.randn(batch, *job["input_shape"]).to(device))
        want = (batch, classes)
        if (got := _shape(out)) != want:
            raise _Invalid(f"forward returned shape {got}, expected {want}")
        result["params"] = int(sum(p.numel() for p in net.parameters()))
        if data is not None:
            stage = "training"
            result["preds"] = _train(net, data, job["train"], device)
        else:  # code that fails only when trained is invalid here too, not `ok`
            stage = "train-mode forward and backward"
            _train_step_check(net, job, device)
        status, reason = "ok", "ok"
    except _Invalid as exc:
        status, reason = "invalid", f"invalid: {exc}"
    except BaseException as exc:  # candidate code may raise anything, SystemExit included
        try:
            status, reason = _classify(exc, stage)
        except BaseException:  # its class is the candidate's: `__str__` or `code` may raise,
            # which ended the child without a report (crashed, a caught refusal lost)
            status, reason = "invalid", f"invalid: an exception that cannot be shown (in {stage})"
        if status == "invalid":
            with contextlib.suppress(BaseException):
                traceback.print_exc()  # into the log, which the caller gets back
    if refusals:  # even when the candidate caught the refusal and carried on
        status, reason = "forbidden", f"forbidden: {refusals[0]} refused by sandbox"
    result.update(status=status, reason=_one_line(reason))


def _shape(out: object) -> tuple[int, ...] | str:
    """The output's true shape (its type's name when not a tensor): a Tensor subclass may
    override `shape`, `size` or `__torch_function__` to claim the expected one."""
    import torch

    if not isinstance(out, torch.Tensor):
        return type(out).__name__
    with torch._C.DisableTorchFunctionSubclass():
        return tuple(torch._C.TensorBase.size(out))


def _train_step_check(net, job: dict, device) -> None:
    """What training does first, on a tiny random batch (>= 2: BatchNorm needs it): a forward
    in train mode, the loss and its backward (no optimizer step: the net is not trained, and
    is discarded after, so nothing more of the candidate's is called)."""
    import torch
    from torch import nn

    batch, classes = max(2, int(job["batch"])), int(job["classes"])
    net.train()
    out = net(torch.randn(batch, *job["input_shape"]).to(device))
    if (got := _shape(out)) != (batch, classes):
        raise _Invalid(f"forward in train mode returned shape {got}, expected {(batch, classes)}")
    if not out.requires_grad:
        raise _Invalid("nothing to train: the output depends on no trainable parameter")
    labels = torch.randint(0, classes, (batch,)).to(device)
    nn.functional.cross_entropy(out, labels).backward()


def _train(net, data: dict, spec: dict, device) -> list[int]:
    """One deterministic pass of minibatch training, then predictions on x_val (no labels here);
    on `device` (the batches' order is drawn on the CPU, the same on either)."""
    import torch
    from torch import nn

    x, y, x_val = (torch.from_numpy(data[k]).to(device) for k in ("x", "y", "x_val"))
    x, x_val, y = x.float(), x_val.float(), y.long()
    gen = torch.Generator().manual_seed(int(spec["seed"]))
    opt_cls = torch.optim.Adam if spec["optimizer"] == "adam" else torch.optim.SGD
    opt = opt_cls(net.parameters(), lr=float(spec["lr"]))
    bs = int(spec["batch_size"])
    net.train()
    for _ in range(int(spec["epochs"])):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), bs):
            idx = order[i : i + bs]
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return [
            int(v)
            for i in range(0, len(x_val), 256)
            for v in net(x_val[i : i + 256]).argmax(1).cpu()
        ]


def _child(job: dict, workdir: str, wfd: int, vm_bytes: int, cpu: int) -> None:
    """Runs in the forked child: confine this process, evaluate, write the result, never return."""
    me = os.getpid()  # stays in the worker's process group, which the host kills as a whole
    _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the zygote
    os.chdir(workdir)
    os.environ.update(HOME=workdir, TMPDIR=workdir)
    log = os.open(".log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0), os.dup2(log, 1), os.dup2(log, 2)
    os.closerange(3, wfd)
    os.closerange(wfd + 1, 1 << 16)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversize writes fail with EFBIG instead
    tasks = job["base_tasks"] + EXTRA_TASKS
    memory = vm_bytes + (int(job["memory_mb"]) << 20)
    files = 64
    if job.get("device") == "cuda":  # CUDA reserves tens of GB of address space and opens
        memory, files = resource.RLIM_INFINITY, 256  # a file per node: the cgroup bounds memory
    for lim, value in (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (memory, memory)),
        (resource.RLIMIT_NOFILE, (files, files)),
        (resource.RLIMIT_FSIZE, (FSIZE, FSIZE)),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_NPROC, (tasks, tasks)),
    ):
        resource.setrlimit(lim, value)
    no_exec = job.get("audit", True) and job.get("device") != "cuda"  # (CUDA not checked so)
    if (rules := FILTERS.get("no_exec" if no_exec else "plain")) is not None:
        rules.load()  # the seccomp filter: this process and all it starts (`job_filters`)
    result: dict = {"status": "crashed", "reason": "crashed: evaluation did not finish"}
    _evaluate(job, result)
    if os.getpid() == me:  # processes forked by the candidate report nothing
        with contextlib.suppress(BaseException):
            sys.stdout.flush(), sys.stderr.flush()
        data = json.dumps(result).encode()
        while data:
            data = data[os.write(wfd, data) :]
    os._exit(0)


def _run_job(job: dict, workroot: str, vm_bytes: int) -> dict:
    """Run one job in a forked child, end it at its deadline, and return a checked reply."""
    workdir = os.path.join(workroot, secrets.token_hex(16))  # unguessable: no job can reach it
    os.mkdir(workdir, 0o700)
    rfd, wfd = os.pipe()
    timeout = float(job["timeout_s"])
    cpu = math.ceil(timeout) + 1  # backs up the wall clock below
    cap = RESULT_CAP + 16 * int(job.get("n_val") or 0)
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rfd)
            _child(job, workdir, wfd, vm_bytes, cpu)
        finally:
            os._exit(70)
    os.close(wfd)
    deadline = time.monotonic() + timeout
    pidfd, chunks, size, status, used = os.pidfd_open(pid), [], 0, None, 0.0
    watch = [rfd, pidfd]
    while status is None:
        left = deadline - time.monotonic()
        ready = select.select(watch, [], [], max(0.0, left))[0] if left > 0 else []
        if not ready:  # the deadline: SIGKILL the job and everything it started, at once
            os.kill(pid, signal.SIGKILL)
            _reap_all()
            status = -1
            break
        if rfd in ready:
            chunk = os.read(rfd, 1 << 16)
            if size <= cap and chunk:
                chunks.append(chunk)
                size += len(chunk)
            else:  # EOF stays "ready": a job that closed its pipe made us spin a core
                watch.remove(rfd)
            if size > cap:  # its outcome is decided (oversized): end it rather than read on
                os.kill(pid, signal.SIGKILL)
        if pidfd in ready:
            _, status, usage = os.wait4(pid, 0)
            used = usage.ru_utime + usage.ru_stime
    os.set_blocking(rfd, False)
    with contextlib.suppress(BlockingIOError):
        while size <= cap and (chunk := os.read(rfd, 1 << 16)):
            chunks.append(chunk)
            size += len(chunk)
    os.close(rfd), os.close(pidfd)
    clean = _reap_all()
    if status == -1:
        reply = {"status": "timeout", "reason": f"timeout: exceeded {timeout:g} s wall clock"}
    elif size > cap:
        reply = {"status": "crashed", "reason": "crashed: oversized result from the job"}
    else:
        reply = _parse_result(b"".join(chunks), status, cpu, used)
    reply["log"] = _log_tail(os.path.join(workdir, ".log"), LOG_TAIL)
    if CONFIG.get("private_work") and reply["status"] != "ok" and _work_full(workroot):
        size_mb = CONFIG.get("work_mb", 256)
        reply.update(status="crashed", reason=f"crashed: work directory full ({size_mb} MB)")
    removed = remove_tree(workdir)
    if CONFIG.get("drop_keys"):  # what the job left in our uid's keyrings would outlive us
        _drop_keys()
    changed = _changed(_snapshot(workroot, *FLAGS), BASELINE.get("state"))
    for _ in range(10):  # a tmpfs may count a removed tree's inodes and blocks a moment longer
        if not changed or any(not c.startswith("work root") for c in changed):
            break  # (a worker was replaced after a 3000-deep tree once, on a loaded machine)
        time.sleep(0.02)
        changed = _changed(_snapshot(workroot, *FLAGS), BASELINE.get("state"))
    if changed or not clean or not removed:  # why the host replaces us, in its log of us
        why = changed + ["processes left"] * (not clean) + ["files left"] * (not removed)
        print(f"job {job['id']} left the worker changed: {', '.join(why)}", file=sys.stderr)
    reply.update(id=job["id"], dirty=not clean or not removed or bool(changed))
    return reply


SNAPSHOT = ("limits", "process", "parent", "directory", "work root", "ipc and network")


def _changed(now: tuple, before: tuple | None) -> list[str]:
    """The parts of `_snapshot` that differ, each with the positions inside it that do."""
    if before is None:
        return ["no snapshot"]
    out = []
    for name, a, b in zip(SNAPSHOT, now, before, strict=True):
        if a != b:
            inner = (
                [str(i) for i, (x, y) in enumerate(zip(a, b)) if x != y]
                if (isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b))
                else []
            )
            out.append(f"{name} {','.join(inner)}".strip())
    return out


def _parse_result(raw: bytes, status: int, cpu: int, used: float = 0.0) -> dict:
    """What the child reported, reduced to the fields and types we accept, else what its exit
    status tells. The child ran candidate code: its report is a claim, checked again by the host
    (which alone holds the held-out labels and computes accuracy). `used`: its CPU seconds."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and used >= cpu):
            # SIGKILL past the CPU limit: the hard limit, after SIGXCPU was ignored (threads)
            return {"status": "timeout", "reason": f"timeout: exceeded the CPU limit of {cpu} s"}
        if sig == signal.SIGKILL:  # the host, which can read the job's OOM count, may relabel
            why = "oom: killed by SIGKILL (likely out of memory)"
            return {"status": "oom", "reason": why, "sigkill": True}
        names = {s.value: s.name for s in signal.Signals}  # not every number has a name (SIGRT*)
        return {
            "status": "crashed",
            "reason": f"crashed: killed by {names.get(sig, f'signal {sig}')}",
        }
    result = _safe_json(raw, len(raw))
    code = os.waitstatus_to_exitcode(status)
    if result is None or not isinstance(result.get("status"), str):
        why = "malformed result" if raw else "no result"
        return {"status": "crashed", "reason": f"crashed: exited with code {code} and {why}"}
    out = {"status": result["status"], "reason": _one_line(result.get("reason", ""))}
    if type(result.get("params")) is int:
        out["params"] = result["params"]
    preds = result.get("preds")
    if isinstance(preds, list) and all(type(p) is int for p in preds):
        out["preds"] = preds
    return out


CONFIG: dict = {}
BASELINE: dict = {}
FLAGS: list = [False, False, None]  # private work tmpfs, private ipc, mqueue mount
FILTERS: dict = {}  # the jobs' seccomp filters, "plain" and "no_exec" (none without libseccomp)


def main() -> None:
    cfg = json.loads(sys.argv[2])
    CONFIG.update(cfg)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if p != here] + cfg.get("path", [])
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)  # only the host's SIGKILL ends us
    workroot = cfg["workroot"]
    if os.getuid() == 0 and cfg.get("cover") is not None:
        _private_view(cfg)
    _warm_up(bool(cfg.get("gpu")))
    filters, no_filter = job_filters()  # libseccomp is found now, while the system is readable
    FILTERS.update(filters)
    if os.getuid() == 0 and cfg.get("uid") is not None:
        if cfg.get("unshare_net"):  # CLONE_NEWNET, best effort: a loopback that is down, only
            _libc.unshare(0x40000000)
        if cfg.get("chown"):
            os.chown(workroot, cfg["uid"], cfg["gid"])
        os.setgroups([])
        os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
        os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
    _own_keyring()  # after the uid change: a keyring of our uid, not the host's session one
    # our uid's keyrings are ours alone with a dedicated uid or a user namespace (bwrap), not
    # in the fallback run as a normal user: those are the user's own (a Kerberos cache ...)
    CONFIG["drop_keys"] = cfg.get("uid") is not None or bool(cfg.get("private_work"))
    if CONFIG["drop_keys"]:
        _drop_keys()  # makes the keyrings it clears after each job, before the snapshot
    _prctl(38, 1)  # PR_SET_NO_NEW_PRIVS
    _prctl(4, 0)  # PR_SET_DUMPABLE = 0: jobs (same uid) cannot ptrace us or read our /proc fds
    _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans of a job come back to us
    _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (after the uid change, which clears it)
    with open(f"/proc/{os.getpid()}/statm") as f:
        vm_bytes = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    FLAGS[:] = [bool(cfg.get("private_work")), bool(cfg.get("private_ipc")), cfg.get("mqueue")]
    BASELINE["state"] = _snapshot(workroot, *FLAGS)
    out = sys.stdout
    hello = {"ready": True, "uid": os.getuid(), "vm_mb": vm_bytes >> 20, "filter": no_filter}
    out.write(json.dumps(hello) + "\n")
    out.flush()
    gc.freeze()  # children then leave the warm heap alone: fewer copy-on-write faults per fork
    base_tasks = _count_my_tasks()  # once: scanning a host's /proc per job costs ~5 ms
    for line in sys.stdin:
        job = dict(json.loads(line), base_tasks=base_tasks)
        try:
            reply = _run_job(job, workroot, vm_bytes)
        except Exception as exc:  # a job broke us (e.g. lowered our limits): say so, then go
            why = _one_line(f"crashed: the job broke its sandbox worker ({exc!r})")
            reply = {"id": job.get("id"), "status": "crashed", "reason": why, "dirty": True}
        out.write(json.dumps(reply) + "\n")
        out.flush()
        if reply.get("dirty"):
            return  # the host replaces us; nothing a job changed serves another job


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != MARKER:
        sys.exit(f"usage: {os.path.basename(sys.argv[0])} {MARKER} CONFIG_JSON")
    main()
