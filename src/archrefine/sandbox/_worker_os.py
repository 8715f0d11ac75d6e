"""The worker's dealings with the operating system: mounts, process reaping, self-checks.

Loaded by `_worker.py` from its own directory (bubblewrap binds both files); standard library
only. Nothing here runs candidate code; the checks below are what let a worker notice that a job
changed it (its limits, its parent, its work area) so the host can replace it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import resource
import signal
import socket
import stat
import time

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _count_my_tasks() -> int:
    """Threads of every process with my real uid (what RLIMIT_NPROC counts), as /proc shows."""
    uid, n = str(os.getuid()), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
                n += int(fields["Threads"]) if fields["Uid"].split()[0] == uid else 0
    return n


def _reap_all(limit_s: float = 5.0) -> bool:
    """Kill and reap every descendant; none can escape, as orphans are reparented to us."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return True  # the usual case: the job left nothing behind
        kids: dict[int, list[int]] = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/stat", "rb") as f:
                kids.setdefault(int(f.read().rsplit(b")", 1)[1].split()[1]), []).append(int(pid))
        todo = [os.getpid()]
        while todo:
            for pid in kids.get(todo.pop(), []):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                todo.append(pid)
        time.sleep(0.002)
    return False


def _work_full(workroot: str) -> bool:
    with contextlib.suppress(OSError):
        st = os.statvfs(workroot)
        return st.f_bavail * st.f_frsize < (1 << 20) or st.f_favail == 0
    return False


def _log_tail(path: str, tail: int) -> str:
    """The end of the job's log, which the job may have replaced: a FIFO would block a plain
    open(), a symlink could point anywhere; only a regular file of its own is read."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError:
        return ""
    with contextlib.suppress(OSError), os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ""
        f.seek(max(0, st.st_size - tail))
        return f.read(tail).decode("utf-8", "replace")
    return ""


def remove_tree(path: str) -> bool:
    """Delete a directory tree a job made, however deep or locked; True when it is gone.

    Neither recursive (`shutil.rmtree` and `os.walk` raise RecursionError on a tree a few
    thousand levels deep, which a job makes in milliseconds) nor path-based (such paths pass
    PATH_MAX): each subdirectory's entries are lifted to the top by `rename` through directory
    descriptors, then the emptied directory is removed. Symlinks are removed, never followed.
    """
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        os.chmod(path, 0o700)  # a job may have locked its own directories
        top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    tag, n = os.urandom(6).hex(), 0
    try:
        while names := os.listdir(top):
            for name in names:
                try:
                    os.unlink(name, dir_fd=top)
                    continue
                except IsADirectoryError:
                    pass
                os.chmod(name, 0o700, dir_fd=top)  # a directory (unlink took any symlink)
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
                try:
                    for entry in os.listdir(sub):
                        n += 1
                        if stat.S_ISDIR(os.lstat(entry, dir_fd=sub).st_mode):
                            os.chmod(entry, 0o700, dir_fd=sub)  # moving it rewrites its ".."
                        os.rename(entry, f".rm-{tag}-{n}", src_dir_fd=sub, dst_dir_fd=top)
                finally:
                    os.close(sub)
                os.rmdir(name, dir_fd=top)
    except OSError:
        return False
    finally:
        os.close(top)
    with contextlib.suppress(OSError):
        os.rmdir(path)
    return not os.path.lexists(path)


_ESCAPE, _QUOTED = re.compile(rb"\\.", re.S), re.compile(rb'"[^"]*"')


def json_skeleton(raw: bytes) -> bytes:
    """`raw` without its JSON strings, in linear time: escapes go first, so a string is just
    quote-to-quote. (One pattern for an escaped string, `"[^"\\]*(?:\\.[^"\\]*)*"`, is retried
    from every quote of an unterminated run of `\\"`: 72 KB of them kept a worker busy ~30 s.)"""
    return _QUOTED.sub(b"", _ESCAPE.sub(b"", raw))


def _safe_json(raw: bytes, cap: int) -> dict | None:
    """Parse a child's (hostile) report: bounded size, no nesting beyond one list, or None."""
    if len(raw) > cap:
        return None
    skeleton = json_skeleton(raw)
    if skeleton.count(b"[") + skeleton.count(b"{") > 2:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _snapshot(
    workroot: str, private_work: bool, private_ipc: bool, mqueue: str | None = None
) -> tuple:
    """What a job could have changed in this zygote or left for the next job, in one value:
    our rlimits, niceness (also our session's autogroup's, which a process a job starts may
    set, and every later job shares), CPU affinity, scheduling attributes and I/O priority,
    our uid's kernel keys, parent and directory, the work root's owner, mode and (on its
    private tmpfs, and /tmp's) inode and block counts, System V IPC objects, sockets (a private
    ipc and network namespace) and POSIX message queues (its mqueue fs mounted at `mqueue`)."""
    limits = tuple(
        resource.getrlimit(getattr(resource, n)) for n in sorted(dir(resource))
        if n.startswith("RLIMIT_")
    )  # fmt: skip
    st = os.stat(workroot)
    work: tuple = (st.st_uid, st.st_mode)
    if private_work:  # its access time: a job may set it (utime, it may write there), and
        work += (st.st_atime_ns,)  # the next job read it (we never list the directory)
        for where in (workroot, "/tmp"):  # /tmp: private, and writable in a user namespace
            vfs = os.statvfs(where)
            work += (vfs.f_files - vfs.f_ffree, vfs.f_blocks - vfs.f_bfree)
    else:
        work += (len(os.listdir(workroot)),)
    ipc: tuple = ()
    if private_ipc:
        for kind in ("shm", "msg", "sem"):
            with contextlib.suppress(OSError), open(f"/proc/sysvipc/{kind}") as f:
                ipc += (len(f.readlines()),)
        for proto in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6", "unix"):  # our network ns:
            with contextlib.suppress(OSError), open(f"/proc/net/{proto}") as f:  # a job's
                ipc += (len(f.readlines()),)  # TIME_WAIT sockets outlive it, readable by the next
        for name in ("snmp", "snmp6", "netstat", "dev"):  # and its counters: a job's sends
            with contextlib.suppress(OSError), open(f"/proc/net/{name}") as f:  # counted there
                ipc += (f.read(),)  # (37 unroutable ones: Ip OutNoRoutes 37) for the next
    if mqueue:  # POSIX message queues of our ipc namespace outlive the job that made them
        with contextlib.suppress(OSError):
            ipc += (len(os.listdir(mqueue)),)
    me = (
        os.getpriority(os.PRIO_PROCESS, 0),
        tuple(sorted(os.sched_getaffinity(0))),
        os.sched_getscheduler(0),  # a job may make us SCHED_IDLE: same uid, no ptrace needed
        os.sched_getparam(0).sched_priority,
        _sched_attr(),  # the rest of it (sched_setattr): slice, utilisation clamps, flags
        _ioprio(),
        _my_keys(),
        _autogroup(),
    )
    return limits, me, os.getppid(), os.getcwd(), work, ipc


CLONE_NEW = (0x20000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
"""CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET: a job makes no namespace."""


def job_filters() -> tuple[dict, str]:
    """Seccomp filters for jobs (libseccomp, through pyseccomp), built once here and loaded by
    each job's process (`load_filter`); every process it starts, also through exec, keeps it.
    Socket buffers are kernel memory that the memory cgroup does not charge (cgroup v1 counts
    TCP only with its own limit, UDP and netlink not at all), so a job of `memory_mb` 64 held
    1.7 GB in netlink sockets, reached by exec'ing a fresh interpreter, which the audit hook
    does not follow. So, for every job: sockets of no family but AF_UNIX (whose buffers the
    cgroup charges), no io_uring (which makes sockets without `socket`), no namespaces (a user
    and network namespace of its own would give raw sockets), no bpf, perf_event_open or
    userfaultfd. With the audit policy on CPU jobs also no exec: the policy refuses every new
    program, and a fresh interpreter has no policy. Returns ({"plain": filter, "no_exec":
    filter}, "") or ({}, why not)."""
    try:
        import pyseccomp as sc
    except (ImportError, RuntimeError, OSError) as exc:  # pyseccomp raises if no libseccomp
        return {}, f"no seccomp filter: {type(exc).__name__}: {exc}"
    eperm, enosys = sc.ERRNO(errno.EPERM), sc.ERRNO(errno.ENOSYS)
    rules = [(sc.ERRNO(errno.EAFNOSUPPORT), call, sc.Arg(0, sc.NE, socket.AF_UNIX))
             for call in ("socket", "socketpair")]  # fmt: skip
    rules += [(enosys, call) for call in ("io_uring_setup", "io_uring_enter", "io_uring_register")]
    rules += [(eperm, call) for call in ("unshare", "setns", "bpf", "perf_event_open")]
    rules += [(eperm, "userfaultfd"), (enosys, "clone3")]  # clone3: glibc falls back to clone
    if os.uname().machine in ("x86_64", "aarch64"):  # where clone's flags are its first argument
        rules += [(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag)) for flag in CLONE_NEW]
    filters, no_exec = {}, [(eperm, "execve"), (eperm, "execveat")]
    try:
        for kind, extra in (("plain", []), ("no_exec", no_exec)):
            filters[kind] = sc.SyscallFilter(sc.ALLOW)
            for action, call, *args in rules + extra:
                filters[kind].add_rule(action, call, *args)
    except (OSError, RuntimeError, ValueError) as exc:  # a call this libseccomp does not know
        return {}, f"no seccomp filter: {type(exc).__name__}: {exc}"
    return filters, ""


def _autogroup() -> str:
    """Our session's autogroup and its niceness (`/autogroup-12 nice 0`), "" without them."""
    with contextlib.suppress(OSError), open("/proc/self/autogroup") as f:
        return f.read(200)
    return ""


SCHED_GETATTR = {"x86_64": 315, "aarch64": 275, "i686": 352, "ppc64le": 356, "s390x": 346}


def _sched_attr() -> bytes:
    """All our scheduling attributes as the kernel reports them (sched_getattr, struct
    sched_attr version 1); b"" where unknown. Besides policy and priority, what a job of the
    same uid can set on us with sched_setattr (no ptrace needed) and every later job inherits:
    the fair scheduler's slice (`sched_runtime`), utilisation clamps, flags."""
    nr = SCHED_GETATTR.get(os.uname().machine)
    attr = ctypes.create_string_buffer(56)
    if nr is None or _libc.syscall(nr, 0, attr, 56, 0) != 0:
        return b""
    return attr.raw


IOPRIO_GET = {"x86_64": 252, "aarch64": 31, "i686": 290, "ppc64le": 274, "s390x": 283}


def _ioprio() -> int:
    """Our I/O priority (ioprio_get), which a job of the same uid can set; -1 where unknown."""
    nr = IOPRIO_GET.get(os.uname().machine)
    return int(_libc.syscall(nr, 1, 0)) if nr else -1  # IOPRIO_WHO_PROCESS, ourselves


KEYCTL = {"x86_64": 250, "aarch64": 219, "i686": 288, "ppc64le": 271, "s390x": 280}


def _own_keyring() -> None:
    """Join a new anonymous session keyring (KEYCTL_JOIN_SESSION_KEYRING), ours alone: we
    inherited the host's (a systemd service's, a login's), which jobs possessed too, so they
    could read its keys, clear it and leave keys in it for every later job of every worker.
    Best effort: where keyctl is refused (a seccomp filter), jobs cannot use it either."""
    nr = KEYCTL.get(os.uname().machine)
    if nr is not None:
        _libc.syscall(nr, 1, None)


def _drop_keys() -> None:
    """Unlink every key in our uid's keyrings (user, user session, persistent) and our session
    keyring. They outlive every process of the uid: a job's 200 keys stayed in the kernel's
    memory, counted in no cgroup, long after its worker (and uid) was replaced."""
    nr = KEYCTL.get(os.uname().machine)
    if nr is None:
        return
    persistent = _libc.syscall(nr, 22, -1, -3)  # KEYCTL_GET_PERSISTENT, linked to our session
    if persistent > 0:
        _libc.syscall(nr, 7, persistent)  # KEYCTL_CLEAR
    for ring in (-3, -4, -5):  # session (the link above too), user, user session
        _libc.syscall(nr, 7, ring)


def _my_keys() -> str:
    """Our uid's kernel key quota line (a job's keys, add_key, outlive it, per uid) and every
    key we can see, without its usage count: a job may change the permissions or expiry of our
    keyrings, or swap our session keyring, and every later job read them (32 bits a keyring)."""
    quota, keys = "", []
    with contextlib.suppress(OSError), open("/proc/key-users") as f:
        for line in f:
            uid, _, rest = line.partition(":")
            if uid.strip() == str(os.getuid()):
                quota = " ".join(rest.split()[1:])  # keys and bytes, not the usage count
    with contextlib.suppress(OSError), open("/proc/keys") as f:
        keys = [" ".join(line.split()[:2] + line.split()[3:]) for line in f]
    return "\n".join([quota, *keys])


MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 32, 4096, 16384, 1 << 18
)  # fmt: skip


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    enc = [None if v is None else v.encode() for v in (src, target, fstype, data or None)]
    if _libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount on {target}: {os.strerror(err)}")


def _private_view(cfg: dict) -> None:
    """The fallback's file-system view, as root in our own mount namespace (unshare): empty
    /tmp, /dev/shm, /run, /home (...); our inputs and Python bound back; every package directory
    entry that is not torch, numpy or their requirements, and the system's shared data, hidden;
    the job directories on a tmpfs of their own. Nothing here reaches the host's mounts."""
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    keep = {p: os.open(p, os.O_PATH) for p in cfg["keep"] if os.path.exists(p)}
    covered = []
    for d in cfg["cover"]:
        if os.path.isdir(d) and not os.path.islink(d):
            _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
            covered.append(d)
    bound: list[str] = []
    for path, fd in sorted(keep.items()):  # parents first; what they bind brings the rest
        under = any(path == b or path.startswith(b + "/") for b in bound)
        if not under and any(path == c or path.startswith(c + "/") for c in covered):
            bound.append(path)
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.makedirs(path, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "a").close()  # noqa: SIM115 - a mount point
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)
    for site, names in cfg["hide"].items():  # like bwrap: an empty tmpfs, the allowed bound back
        if not os.path.isdir(site):
            continue
        fds = {n: os.open(os.path.join(site, n), os.O_PATH) for n in names}
        _mount("tmpfs", site, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
        for name, fd in fds.items():
            path = os.path.join(site, name)
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.mkdir(path)
            else:
                open(path, "a").close()  # noqa: SIM115 - a mount point
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            os.close(fd)
        _mount(None, site, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    mq = cfg.get("mqueue")  # our ipc namespace's POSIX queues, over the host's (world-writable)
    if mq and (os.path.isdir(mq) or os.path.dirname(mq) in covered):
        os.makedirs(mq, exist_ok=True)
        _mount("mqueue", mq, "mqueue", MS_NOSUID | MS_NODEV)
    size = int(cfg.get("work_mb", 256))
    _mount("tmpfs", cfg["workroot"], "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0733,size={size}m")
    os.chdir(cfg["workroot"])
