"""What a sandbox worker may see and how much memory its jobs may use, decided on the host.

Two concerns of `sandbox.py`/`pool.py` that need no worker process:

* **The file-system view.** A candidate must not reach any copy of the evaluation data: not
  scikit-learn's bundled digits (`sklearn/datasets/data/digits.csv.gz`), not a dataset package,
  not the host's temporary files. So a worker sees the Python standard library and, of the
  installed packages, only torch, numpy and what they require (their distributions' own files);
  every other package directory — in the environment, in the interpreter's prefix and in the
  system's dist-packages — is hidden behind an empty, read-only tmpfs, and so is `/usr/share`.
* **Memory per job as a whole.** `RLIMIT_AS` bounds one process; a job that forks does not care.
  Where the machine lets us (root and a writable memory cgroup, v1 or v2), every worker runs in
  its own memory cgroup whose limit is the warm worker's usage plus the job's `memory_mb`, so
  all of a job's processes (and its tmpfs files) share one budget and the kernel's OOM killer,
  counted in the cgroup, tells us the job ran out of memory.
* **CPU per worker as a whole.** `RLIMIT_CPU` bounds each process's time, not its share of the
  machine: a job running 30 busy processes (or torch at 30 threads), each in a session of its
  own, would get 30 times the CPU of a job in another worker and could push that job past its
  wall-clock limit. Where the machine lets us (root and a cpu cgroup), every worker runs in its
  own cpu cgroup of the default weight, so under contention each worker's job gets an equal
  share however many tasks it starts (`cpu_problem` says why not, where not).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import importlib.metadata as md
import os
import re
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

# packages whose purpose is data: never visible inside, even should torch come to require one
DATA_PACKAGES = frozenset(
    str.split("sklearn scikit_learn nas_bench_graph torchvision datasets tensorflow_datasets keras")
)
ROOTS = ("torch", "numpy")  # what a candidate may import besides the standard library
HARNESS = ("pyseccomp",)  # what the worker itself imports besides (the jobs' seccomp filter)
SYSTEM_HIDDEN = ("/usr/share", "/usr/local/share", "/usr/src", "/usr/games")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wanted(requirement: str) -> str | None:
    """The distribution a requirement line names, or None when only an extra asks for it."""
    name, _, marker = requirement.partition(";")
    if "extra" in marker:
        return None
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", name)
    return match.group(1) if match else None


@functools.cache
def allowed_entries() -> dict[str, frozenset[str]]:
    """site directory -> top-level names (packages, modules, `.libs`) of torch, numpy and what
    they require, transitively, and of the worker's own `HARNESS`; computed from the installed
    distributions' file lists."""
    seen: set[str] = set()
    todo = [*ROOTS, *HARNESS]
    found: dict[str, set[str]] = {}
    while todo:
        name = todo.pop()
        if _norm(name) in seen:
            continue
        seen.add(_norm(name))
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        site = os.path.realpath(str(dist.locate_file("")))
        tops = {str(f).split("/")[0] for f in dist.files or ()}
        tops -= {"", "..", "__pycache__"}
        tops = {t for t in tops if t.split(".")[0].split("-")[0] not in DATA_PACKAGES}
        found.setdefault(site, set()).update(tops)
        todo += [w for r in dist.requires or () if (w := _wanted(r))]
    return {site: frozenset(names) for site, names in found.items()}


def package_dirs(prefixes: list[str]) -> list[str]:
    """Every package directory under the system and the interpreter prefixes (and those the
    allowed packages live in)."""
    return sorted(found_package_dirs((*SYSTEM_DIRS, *prefixes)) | set(allowed_entries()))


SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
"""What every worker sees of the host (read-only), besides the interpreter prefixes."""
PACKAGE_DIR_NAMES = frozenset(("site-packages", "dist-packages"))
CONDA_PACKAGES = ("pkgs", "conda-meta")
"""A conda prefix's package cache (`pkgs`, beside its `conda-meta`): archives of every package
it installed, scikit-learn's (and so the digits) among them."""


@functools.cache
def found_package_dirs(tops: tuple[str, ...]) -> frozenset[str]:
    """Every Python package directory (site-/dist-packages) under `tops`, at any depth: other
    Pythons keep theirs where no fixed pattern looks (a conda base under /usr/local, Fedora's
    /usr/lib64/python3*, an application's own Python under /usr/lib, the `envs` and unpacked
    `pkgs` of a conda prefix), and any of them may hold scikit-learn's digits; so may a conda
    prefix's package cache (`CONDA_PACKAGES`), which is found too. Symlinks below `tops` (which
    may be links) are not followed; the hidden system data (`SYSTEM_HIDDEN`) and a package
    directory's own contents are not searched. Once per process (~0.2 s warm, ~1.5 s cold)."""
    found: set[str] = set()
    real = {os.path.realpath(t) for t in tops if os.path.isdir(t)}  # a prefix may be a link
    todo = [t for t in real if not any(t.startswith(f"{o}/") for o in real)]  # each tree once
    while todo:
        with contextlib.suppress(OSError), os.scandir(todo.pop()) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if not entry.is_dir(follow_symlinks=False) or entry.path in SYSTEM_HIDDEN:
                        continue
                    if entry.name in PACKAGE_DIR_NAMES or _conda_cache(entry.path):
                        found.add(os.path.realpath(entry.path))
                    else:
                        todo.append(entry.path)
    return frozenset(found)


def _conda_cache(path: str) -> bool:
    cache, meta = CONDA_PACKAGES
    return os.path.basename(path) == cache and os.path.isdir(os.path.join(path, "..", meta))


def bwrap_view(prefixes: list[str]) -> list[str]:
    """bwrap options that hide every package directory behind an empty read-only tmpfs and then
    bind back only the allowed entries, read-only; also hide the system's shared data."""
    args: list[str] = []
    hidden = [d for d in [*SYSTEM_HIDDEN, *package_dirs(prefixes)] if os.path.isdir(d)]
    for path in hidden:
        args += ["--perms", "0755", "--tmpfs", path]
    for site, names in sorted(allowed_entries().items()):
        for name in sorted(names):
            path = os.path.join(site, name)
            if os.path.exists(path):
                args += ["--ro-bind", path, path]
    for path in hidden:  # after the binds, which need their mount points made in the tmpfs
        args += ["--remount-ro", path]
    return args


#: the device nodes a CUDA program opens besides the per-GPU `nvidiaN`: control, unified memory
GPU_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset", "nvidia-caps")


def gpu_devices(dev: str = "/dev") -> list[str]:
    """The NVIDIA device nodes under `dev` (empty where there is no GPU): what a candidate
    needs to reach a GPU; the driver's libraries already come with the read-only /usr."""
    gpus = sorted(glob.glob(os.path.join(dev, "nvidia[0-9]*")))
    if not gpus:
        return []
    return gpus + [q for n in GPU_NODES if os.path.exists(q := os.path.join(dev, n))]


def bwrap_gpu(devices: list[str]) -> list[str]:
    """bwrap options that bind `devices` (device nodes, or nvidia-caps' directory) into the
    private /dev, read-write as CUDA needs; they must follow `--dev /dev`."""
    args: list[str] = []
    for path in devices:
        args += ["--dev-bind", path, path]
    return args


def fallback_view(prefixes: list[str]) -> dict[str, list[str]]:
    """For the fallback's own mount namespace: each package directory to cover with an empty
    tmpfs -> the entries to bind back (the system's shared data gets nothing back)."""
    allowed = allowed_entries()
    view: dict[str, list[str]] = {d: [] for d in SYSTEM_HIDDEN if os.path.isdir(d)}
    for site in package_dirs(prefixes):
        keep = allowed.get(site, frozenset())
        view[site] = sorted(n for n in keep if os.path.exists(os.path.join(site, n)))
    return view


# ---- memory cgroups --------------------------------------------------------------------------


@dataclass(frozen=True)
class Cgroup:
    """One worker's cgroup: its memory cgroup (v1 `memory.*` or v2 `memory.*` files in `path`),
    or (v1) its cpu cgroup, of which only `procs` and `remove` are used."""

    path: str
    version: int

    @property
    def procs(self) -> str:
        return os.path.join(self.path, "cgroup.procs")

    def _file(self, v1: str, v2: str) -> str:
        return os.path.join(self.path, v1 if self.version == 1 else v2)

    def usage(self) -> int:
        return int(Path(self._file("memory.usage_in_bytes", "memory.current")).read_text())

    def set_limit(self, limit: int) -> None:
        Path(self._file("memory.limit_in_bytes", "memory.max")).write_text(str(limit))

    def oom_kills(self) -> int:
        """How many processes the OOM killer ended in this cgroup so far."""
        text = Path(self._file("memory.oom_control", "memory.events")).read_text()
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.rmdir(self.path)


def _own_cgroup(controller: str) -> tuple[str, int] | None:
    """(directory of this process's cgroup that has `controller`, version) if one is mounted."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    mounts = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            _, where, kind, opts, *_ = line.split()
            if kind == "cgroup" and controller in opts.split(","):
                mounts[1] = where
            elif kind == "cgroup2":
                mounts.setdefault(2, where)
    for line in lines:
        _, names, rel = line.split(":", 2)
        if 1 in mounts and controller in names.split(","):
            return os.path.join(mounts[1], rel.lstrip("/")), 1
    if 2 in mounts:
        rel = next((line.split(":", 2)[2] for line in lines if line.startswith("0::")), "/")
        return os.path.join(mounts[2], rel.lstrip("/")), 2
    return None


def _mounted(controller: str) -> tuple[str, int] | str:
    """This process's cgroup with `controller`, (directory, version), or why not (a string)."""
    if os.geteuid() != 0:
        return "not root"
    own = _own_cgroup(controller)
    return own if own is not None else f"no {controller} cgroup is mounted"


@functools.cache
def cgroup_parent() -> tuple[str, int] | str:
    """Where worker cgroups go, (directory, version), or why there are none (a string)."""
    own = _mounted("memory")
    if isinstance(own, str):
        return own
    where, version = own
    candidates = [where]
    if version == 2:  # v2: a cgroup with processes cannot delegate; the hierarchy root can
        root = where
        while os.path.exists(os.path.join(os.path.dirname(root), "cgroup.controllers")):
            root = os.path.dirname(root)
        candidates.append(root)
    problem = "no writable memory cgroup"
    for parent in candidates:
        probe = os.path.join(parent, f"archrefine-probe-{uuid.uuid4().hex[:8]}")
        try:
            if version == 2:
                ctl = Path(parent, "cgroup.subtree_control")
                if "memory" not in ctl.read_text().split():
                    ctl.write_text("+memory")
            os.mkdir(probe)
            try:
                Cgroup(probe, version).set_limit(1 << 40)
            finally:
                os.rmdir(probe)
            sweep_stale(parent)
            return parent, version
        except OSError as err:
            problem = f"memory cgroup at {parent} not usable ({err.strerror or err})"
    return problem


def new_cgroup(name: str) -> Cgroup | None:
    """A fresh memory cgroup for one worker, or None where the machine does not allow one."""
    found = cgroup_parent()
    if isinstance(found, str):
        return None
    parent, version = found
    path = os.path.join(parent, f"archrefine-{os.getpid()}-{name}-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    swap = os.path.join(path, "memory.swap.max")  # v2: a job must not page out instead of OOM
    with contextlib.suppress(OSError):
        if os.path.exists(swap):
            Path(swap).write_text("0")
    return Cgroup(path, version)


def sweep_stale(parent: str) -> None:
    """Remove worker cgroups left by archrefine processes that no longer exist (killed -9)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(parent):
            match = re.fullmatch(r"archrefine-(\d+)-.*", name)
            if match and not os.path.exists(f"/proc/{match.group(1)}"):
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(parent, name))


@functools.cache
def seccomp_problem() -> str:
    """Why jobs would run without their seccomp filter here ("" when they will not): the
    worker builds it with pyseccomp over libseccomp2 (`_worker_os.job_filters`)."""
    from archrefine.sandbox._worker_os import job_filters

    return job_filters()[1]


def cgroup_problem() -> str:
    """Why jobs get no memory cgroup here ("" when they do): recorded by the docs and tests."""
    found = cgroup_parent()
    return found if isinstance(found, str) else ""


@functools.cache
def cpu_parent() -> tuple[str, int] | str:
    """Where worker cpu cgroups go, (directory, version), or why there are none (a string).
    On cgroup v2 the worker's memory cgroup is its cpu cgroup too: the cpu controller is
    enabled beside memory in their parent."""
    own = _mounted("cpu")
    if isinstance(own, str):
        return own
    where, version = own
    if version == 2:
        memory = cgroup_parent()
        if isinstance(memory, str) or memory[1] != 2:
            return "the cpu controller is in cgroup v2, but no v2 memory cgroup to add it to"
        where = memory[0]
    try:
        if version == 2:
            ctl = Path(where, "cgroup.subtree_control")
            if "cpu" not in ctl.read_text().split():
                ctl.write_text("+cpu")
        else:
            probe = os.path.join(where, f"archrefine-probe-{uuid.uuid4().hex[:8]}")
            os.mkdir(probe)
            os.rmdir(probe)
            sweep_stale(where)
    except OSError as err:
        return f"cpu cgroup at {where} not usable ({err.strerror or err})"
    return where, version


def new_cpu_cgroup(name: str) -> Cgroup | None:
    """A fresh cpu cgroup (v1) for one worker; None where there is none to make: the machine
    allows none, or (v2) the worker's memory cgroup is its cpu cgroup."""
    found = cpu_parent()
    if isinstance(found, str) or found[1] == 2:
        return None
    path = os.path.join(found[0], f"archrefine-{os.getpid()}-{name}-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    return Cgroup(path, 1)


def cpu_problem() -> str:
    """Why workers get no cpu share of their own here ("" when they do)."""
    found = cpu_parent()
    return found if isinstance(found, str) else ""


def python_prefixes() -> list[str]:
    return sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix})
