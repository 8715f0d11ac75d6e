"""Run untrusted, model-written PyTorch code in a separate, confined process.

The candidate source is never executed in the calling process. It runs in a forked child of a
sandboxed "zygote" worker (see `_worker.py`) that has torch imported already; the child applies
per-job rlimits and an audit-hook policy before the source is compiled. The worker itself is
confined by bubblewrap where that works (private mount, pid, net, ipc and uts namespaces; a
dedicated uid when we are root; no dataset visible, see `confine.py`) and otherwise by rlimits,
a dedicated uid and (as root) namespaces of its own made with `unshare`; as root each worker also
gets a memory cgroup. Every reply is validated here (`make_outcome`); accuracy is scored here.
See docs/sandbox.md for guarantees and limits.

Example
-------
>>> out = run_code("import torch.nn as nn\\nclass Net(nn.Sequential):\\n"
...                "    def __init__(self):\\n        super().__init__(nn.Flatten(),"
...                " nn.Linear(3072, 10))\\n")  # doctest: +SKIP
>>> out.status, out.params  # doctest: +SKIP
('ok', 30730)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from archrefine.sandbox.jobs import (  # noqa: F401 - re-exported: the module's names before the split
    ENV_FORCE,
    INSIDE,
    MARKER,
    MAX_MEMORY_MB,
    REPLY_CAP,
    STATUSES,
    UID_BASE,
    WORK_MB,
    WORKER,
    Isolation,
    Launch,
    Outcome,
    SandboxError,
    SandboxWarning,
    TrainSpec,
    bwrap_config,
    bwrap_problem,
    job_options,
    kill_uid,
    launch,
    make_outcome,
    one_line,
    parse_reply,
    printable_log,
    resolve_isolation,
    unshare_problem,
    warn_fallback,
)
from archrefine.sandbox.pool import SandboxPool

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "Outcome",
    "SandboxError",
    "SandboxPool",
    "SandboxWarning",
    "TrainSpec",
    "isolation_level",
    "run_code",
]


def isolation_level(isolation: Isolation = "auto", *, audit: bool = True) -> str:
    """The isolation that `run_code(..., isolation=isolation, audit=audit)` would get here.

    One of "bwrap+audit", "bwrap", "rlimits+audit", "rlimits"; record it with a run's metadata.
    Raises SandboxError when `isolation="bwrap"` is asked for and bwrap does not work here.
    """
    return resolve_isolation(isolation) + ("+audit" if audit else "")


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
    gpus: bool = False,
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
        accuracy on the held-out part; ``y_val`` never enters the sandbox. With neither, one
        training step is still checked (a forward in train mode and a backward, no update), so
        code that fails only when trained is `invalid`.
    isolation : "auto" (bwrap if it works, else rlimits), "bwrap" or "rlimits".
    audit : install the audit-hook policy in the child (turn off only to test the OS layer).
    gpus : build and train on the GPU (`SandboxPool`'s `gpus`).

    Each call starts and stops its own worker (~2 s to import torch); for many candidates use
    `SandboxPool`, which keeps workers warm.
    """
    opts = dict(input_shape=input_shape, classes=classes, batch=batch, train=train, data=data)
    job_options(timeout_s=timeout_s, memory_mb=memory_mb, **opts)  # fail before starting a worker
    limits = dict(timeout_s=timeout_s, memory_mb=memory_mb, isolation=isolation, audit=audit)
    with SandboxPool(1, gpus=gpus, **limits) as pool:
        return pool.run(source, **opts)
