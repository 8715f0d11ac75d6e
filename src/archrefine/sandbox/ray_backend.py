"""Sandboxed evaluations as Ray tasks, so a cluster trains a cycle's candidates in parallel.

Each candidate is one Ray task with declared resources (`num_cpus`, `num_gpus`); inside the task
`run_code` starts a sandbox worker exactly as on one machine, so the sandbox's guarantees hold in
every Ray worker (bubblewrap must be installed on the nodes, or the rlimits fallback applies:
each outcome's `isolation` says which). Ray retries a task once when its *worker process* is lost
(node failure, OOM killer); a second loss is recorded as `crashed`. A candidate cannot cause that:
its code runs in the sandbox's child process, not in the Ray worker.

Each task pays a sandbox worker start-up (~2 s, importing torch): negligible against a GPU-epoch
of training, which is what this backend is for; on one machine the warm `SandboxPool` is faster.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

from archrefine.sandbox.sandbox import Outcome, SandboxError, TrainSpec, one_line

__all__ = ["RayEvaluator"]


def evaluate_one(source: str, options: dict[str, Any], data: Any) -> Outcome:
    """The task body: one candidate in a fresh sandbox (inside a Ray worker)."""
    from archrefine.sandbox.sandbox import run_code

    return run_code(source, data=data, **options)


class RayEvaluator:
    """`map(sources, ...)` like `SandboxPool.map`, each candidate a Ray task.

    Parameters
    ----------
    address : a running cluster (`ray://…` or `auto`); None starts a local Ray instance with
        `local_cpus` CPUs (all when None), shut down again by `close`.
    num_cpus, num_gpus : resources each task declares (Ray schedules by them); with
        num_gpus > 0 the task's sandbox builds and trains on the GPU Ray assigned it.
    timeout_s, memory_mb, isolation : the sandbox's per-candidate limits (see `run_code`).
    task : the task body (tests inject failures here); `evaluate_one` by default.
    """

    def __init__(
        self,
        *,
        address: str | None = None,
        local_cpus: int | None = None,
        num_cpus: float = 1,
        num_gpus: float = 0,
        timeout_s: float = 120,
        memory_mb: int = 2048,
        isolation: str = "auto",
        task: Callable[..., Outcome] = evaluate_one,
    ) -> None:
        try:
            import ray
        except ImportError as err:
            raise SandboxError(
                f"evaluate.backend = 'ray' needs Ray ({err}); pip install 'archrefine[ray]'"
            ) from None
        self._ray, self._started = ray, False
        if not ray.is_initialized():
            if why := unreachable(address):
                raise SandboxError(f"cannot reach Ray at {address}: {why}")
            try:
                ray.init(
                    address=address or None,
                    num_cpus=local_cpus if not address else None,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise SandboxError(f"cannot start or reach Ray at {address or 'local'}: "
                                   f"{one_line(err)}") from None  # fmt: skip
            self._started = True
        self.isolation = f"ray:{isolation}"
        self._options = dict(timeout_s=timeout_s, memory_mb=memory_mb, isolation=isolation,
                             gpus=num_gpus > 0)  # fmt: skip
        self._task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=1)(task)

    def map(
        self,
        sources: Sequence[str],
        *,
        input_shape: Sequence[int] = (3, 32, 32),
        classes: int = 10,
        batch: int = 2,
        train: TrainSpec | None = None,
        data: Any = None,
    ) -> list[Outcome]:
        """Evaluate candidates as parallel tasks; outcomes in the order of `sources`."""
        ray = self._ray
        options = dict(self._options, input_shape=tuple(input_shape), classes=classes,
                       batch=batch, train=train)  # fmt: skip
        shared = ray.put(data) if data is not None else None  # shipped once, not per task
        refs = [self._task.remote(src, options, shared) for src in sources]
        out = []
        for ref in refs:
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayError as err:  # the worker was lost twice, or the task failed
                reason = one_line(f"crashed: Ray task failed after a retry ({type(err).__name__})")
                out.append(Outcome("crashed", reason, None, None, 0.0, self.isolation))
        return out

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False

    def __enter__(self) -> RayEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def unreachable(address: str | None, timeout_s: float = 5.0) -> str:
    """Why a Ray address that names a host and port does not answer within `timeout_s` (""
    where it does, or names none: `auto`, a local instance). `ray.init` waits for such an
    address for minutes: `sweep --address bogus:1` was still waiting after 100 s."""
    host, sep, port = (address or "").split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        return ""
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as err:  # no such host, refused, timed out
        return str(err.strerror or err) if not isinstance(err, TimeoutError) else "timed out"
    return ""
