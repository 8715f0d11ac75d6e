"""The kernels of `core/fast.py` compiled ahead of time into an extension module, cached on disk.

A process that loads numba's own cache still imports numba and sets up its compiler before the
first call (~0.65 s of CPU, half of a 1000-trial `archrefine run`, docs/performance.md). numba's
`pycc` compiles the same Python functions with the same compiler into an ordinary extension
module, which imports in under a millisecond without numba. The first process to need the
kernels loads them the usual way and starts a detached build (`start`); later processes import
what it built (`load`). The module is built for this machine's CPU (as numba's JIT is) and
named by a key of everything that shapes it, so a changed kernel, numba, numpy, Python or CPU
gets a module of its own. ARCHREFINE_NO_AOT=1 switches it off.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

A3, A2, A1 = "[:,:,::1]", "[:,::1]", "[::1]"
SIGNATURES = {  # numba's signature, and per argument (dtype, ndim) or a scalar type
    "knn_sums": (
        f"int64{A2}(uint64{A3}, uint64{A3}, int64{A1}, int64, int64, int64)",
        [(np.uint64, 3), (np.uint64, 3), (np.int64, 1), int, int, int],
    ),
    "sample_categorical": (f"int16{A3}(float64{A3}, float64{A3})", [(np.float64, 3)] * 2),
    "propose": (
        f"Tuple((int16{A3}, boolean{A3}))"
        f"(float64{A3}, float64{A3}, float64{A3}, float64, int64{A2}, int16{A3}, int64{A1})",
        [(np.float64, 3)] * 3 + [float, (np.int64, 2), (np.int16, 3), (np.int64, 1)],
    ),
    "written_cost": (
        f"float64{A2}(float64{A3}, int16{A3}, boolean{A3})",
        [(np.float64, 3), (np.int16, 3), (np.bool_, 3)],
    ),
    "token_counts": (
        f"int64{A3}(int16{A3}, int64, boolean{A2})",
        [(np.int16, 3), int, (np.bool_, 2)],
    ),
}


def enabled() -> bool:
    return not os.environ.get("ARCHREFINE_NO_AOT")


def cache_dir() -> Path:
    """Where numba caches `fast.py`'s kernels (NUMBA_CACHE_DIR, else `__pycache__` beside the
    source where writable), else the user's cache directory."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"]) / "archrefine"
    here = Path(__file__).parent / "__pycache__"
    if os.access(here if here.exists() else here.parent, os.W_OK):
        return here
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(home) / "archrefine"


def _read(path: Path | str | None) -> bytes:
    try:
        return Path(path).read_bytes() if path else b""
    except OSError:
        return b""


def _version_file(package: str) -> bytes:
    spec = importlib.util.find_spec(package)
    where = list(spec.submodule_search_locations or []) if spec else []
    return _read(os.path.join(where[0], "_version.py")) if where else b""


CPU_FIELDS = (b"vendor_id", b"cpu family", b"model", b"model name", b"flags",
              b"CPU implementer", b"CPU part", b"Features")  # fmt: skip
"""/proc/cpuinfo's lines that name the CPU and its instructions (x86, then ARM); not `cpu MHz`
or `bogomips`, which change from one read to the next on a machine that scales its clock."""


def _cpu() -> bytes:
    """This machine's CPU model and features (the module uses whatever instructions they
    allow), from the first processor's entry in /proc/cpuinfo where there is one."""
    block = _read("/proc/cpuinfo").split(b"\n\n", 1)[0].splitlines()
    kept = [line for line in block if line.split(b":", 1)[0].strip() in CPU_FIELDS]
    return b"\n".join(kept) or os.uname().machine.encode()


def key(source: bytes) -> str:
    """What the module depends on: the kernels' source (`fast.py`), their signatures, numba's
    and llvmlite's versions, numpy's, Python's and the CPU's."""
    h = hashlib.blake2b(digest_size=12)
    parts = (source, repr(SIGNATURES).encode(), _version_file("numba"), _version_file("llvmlite"))
    for part in (*parts, np.__version__.encode(), sys.version.encode(), _cpu()):
        h.update(len(part).to_bytes(8, "little") + part)
    return h.hexdigest()


def module_path(source: bytes) -> Path:
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return cache_dir() / f"archrefine_kernels_{key(source)}{suffix}"


def load(source: bytes) -> SimpleNamespace | None:
    """The kernels from the module built for `source` on this machine, or None where there is
    none, or it is off, or it cannot be imported (damaged: it is removed, so `start` builds it
    again)."""
    path = module_path(source)
    if not enabled() or not path.is_file():
        return None
    try:
        spec = importlib.util.spec_from_file_location(path.name.split(".")[0], path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        wrapped = {n: _typed(getattr(module, n), types) for n, (_, types) in SIGNATURES.items()}
        return SimpleNamespace(**wrapped)
    except (ImportError, AttributeError, OSError):
        with contextlib.suppress(OSError):
            path.unlink()
        return None


def _typed(fn, spec: list):
    """`fn` with its arguments made the exact types it was compiled for: a compiled module
    does not check an array's layout (a strided view would be read as contiguous), so each is
    made contiguous of its dtype (no copy where it is already), and its dimensions checked."""

    def call(*args):
        if len(args) != len(spec):
            raise TypeError(f"{fn.__name__} takes {len(spec)} arguments, got {len(args)}")
        fixed = []
        for value, want in zip(args, spec):
            if isinstance(want, tuple):
                value = np.ascontiguousarray(value, dtype=want[0])
                if value.ndim != want[1]:
                    why = f"expected {want[1]} dimensions, got {value.ndim}"
                    raise TypeError(f"{fn.__name__}: {why}")
            else:
                value = want(value)
            fixed.append(value)
        return fn(*fixed)

    call.__name__ = fn.__name__
    return call


def start(source: bytes) -> None:
    """Build the module for `source` in a detached process (`python -m archrefine.core.fast
    --aot`), unless it is off, built, being built, or failed here before (`*.failed` says
    why); the caller goes on with numba's JIT meanwhile. Detached twice over (a new session,
    its parent gone at once), so no process of the caller's waits for it or reaps it."""
    path = module_path(source)
    failed = path.with_suffix(".failed")
    if not enabled() or path.exists() or failed.exists() or _busy(path):
        return
    cmd = [sys.executable, "-m", "archrefine.core.fast", "--aot", str(path)]
    with contextlib.suppress(OSError):
        subprocess.Popen(
            [sys.executable, "-c", "import subprocess, sys; subprocess.Popen(sys.argv[1:], "
             "start_new_session=True, stdin=-3, stdout=-3, stderr=-3)", *cmd],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ).wait()  # fmt: skip


def _busy(path: Path) -> bool:
    """Whether a build of `path` holds its lock now, or none could be made there (a
    directory this user cannot write)."""
    import fcntl

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError included: being built
        return True
    return False


def build(kernels: SimpleNamespace, path: Path) -> None:
    """Compile `kernels` (numba dispatchers) into the module at `path`, for this CPU, their
    wrappers releasing the GIL as `nogil=True` makes the JIT's do (the simulator computes
    novelty on a second thread). Written under another name and renamed: a process never
    imports half a module. A failure leaves `*.failed` with its reason, so it is not retried."""
    import fcntl
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return
        try:
            from numba.pycc import CC, compiler

            class NoGil(compiler.Flags):  # pycc's wrappers would hold the GIL
                def __init__(self, *args, **kwargs):
                    super().__init__(*args, **kwargs)
                    self.release_gil = True

            compiler.Flags = NoGil
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                cc = CC(path.name.split(".")[0], source_module=__name__)
                cc.output_dir, cc.target_cpu = tmp, "host"
                for name, (signature, _) in SIGNATURES.items():
                    cc.export(name, signature)(getattr(kernels, name).py_func)
                cc.compile()
                os.replace(os.path.join(tmp, cc.output_file), path)
        except Exception as exc:  # no compiler, no Python headers, ...: the JIT stays in use
            path.with_suffix(".failed").write_text(f"{type(exc).__name__}: {exc}\n")
            raise
