"""What `run_code` and the worker pool share: job options, outcomes, worker replies, isolation.

Its own module so that `pool.py` and `sandbox.py` import it and never each other.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from archrefine.sandbox._worker_os import json_skeleton
from archrefine.sandbox.workers import (  # noqa: F401 - re-exported for pool.py and tests
    INSIDE,
    MARKER,
    UID_BASE,
    WORK_MB,
    WORKER,
    Launch,
    bwrap_config,
    bwrap_problem,
    kill_uid,
    launch,
    unshare_problem,
)

STATUSES = ("ok", "invalid", "timeout", "crashed", "oom", "forbidden")
Isolation = Literal["auto", "bwrap", "rlimits"]
ENV_FORCE = "ARCHREFINE_SANDBOX"  # "rlimits" forces the fallback for isolation="auto"
MAX_MEMORY_MB = 1 << 24  # 16 TiB: larger limits cannot be meant and overflow rlimits
DEVICES = ("cpu", "cuda")  # where a job builds and trains its network
REPLY_CAP = 1 << 20  # bytes of a worker's reply line, besides 16 per held-out prediction


class SandboxWarning(UserWarning):
    """The sandbox runs weaker than it could (no bubblewrap): printed once, on stderr."""


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the candidate): a worker could not start, a memory cgroup
    could not be set up or limited. Never raised for anything a candidate did."""


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
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            # a larger seed would fail inside every job, each as "could not load the job data"
            raise ValueError(f"train.seed: {self.seed!r} is not an integer in [0, 2**63)")
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


# ---- shared with pool.py: job options, outcomes, how workers are launched -----------------------


def one_line(text: object, limit: int = 200) -> str:
    """`text` as one printable line of at most `limit` characters (control characters -> '?')."""
    text = " ".join(str(text).split())
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def printable_log(text: object, limit: int = 2000) -> str:
    """The tail of a log as printable text: lines kept, escape sequences and NULs neutralised."""
    if not isinstance(text, str):
        return ""
    return "".join(c if c.isprintable() or c in "\n\t" else "?" for c in text[-limit:])


def parse_reply(raw: bytes, cap: int = REPLY_CAP) -> dict | None:
    """A worker's reply line as a flat dict, or None when it is not one we could have written.

    Hostile input: longer than `cap`, nested (a reply has one object and at most one list, so
    more than four brackets outside strings is refused before `json.loads` could recurse), not an
    object, or numbers Python refuses (over 4,300 digits) all give None, never an exception.
    """
    if not isinstance(raw, bytes | bytearray) or len(raw) > cap:
        return None
    skeleton = json_skeleton(bytes(raw))  # linear time, whatever the bytes
    if skeleton.count(b"[") + skeleton.count(b"{") > 2:
        return None
    try:
        reply = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return reply if isinstance(reply, dict) else None


def _count(value: object) -> int | None:
    """A non-negative Python int of any size (bools are not counts), else None."""
    return value if type(value) is int and value >= 0 else None


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
    device: str = "cpu",
) -> dict[str, Any]:
    """Validate one job's options (messages name the parameter) and return them as sent."""
    if device not in DEVICES:
        raise ValueError(f"device: {device!r} is not one of {', '.join(DEVICES)}")
    if not (isinstance(timeout_s, int | float) and 0 < timeout_s <= 86400):
        raise ValueError(f"timeout_s: {timeout_s!r} is not a number of seconds in (0, 86400]")
    if not (isinstance(memory_mb, int) and 16 <= memory_mb <= MAX_MEMORY_MB):
        raise ValueError(f"memory_mb: {memory_mb!r} is not an integer in [16, {MAX_MEMORY_MB}]")
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
        device=device,
    )  # fmt: skip


def make_outcome(
    reply: object, y_val: Any, started: float, isolation: str, classes: int | None = None
) -> Outcome:
    """Validate a worker's (untrusted) reply into an Outcome every field of which is sound.

    status is one of STATUSES; reason one printable line <= 200 characters; params a
    non-negative int (any size) or None; accuracy is computed here, from the predictions against
    `y_val` (kept in the caller), finite in [0, 1] or None; seconds finite >= 0; log printable,
    <= 2000 characters. Anything malformed makes the candidate `crashed` with that reason.
    """
    reply = reply if isinstance(reply, dict) else {}
    status, reason = reply.get("status"), one_line(reply.get("reason", ""))
    if status not in STATUSES or not isinstance(reply.get("reason", ""), str):
        status, reason = "crashed", "crashed: malformed result from the sandbox"
    params, preds, accuracy = _count(reply.get("params")), reply.get("preds"), None
    if status == "ok" and params is None:
        status, reason = "crashed", "crashed: malformed parameter count from the sandbox"
    if status == "ok" and y_val is not None:
        labels = list(y_val)
        top = classes if classes is not None else math.inf
        if (
            isinstance(preds, list)
            and len(preds) == len(labels) > 0
            and all(type(p) is int and 0 <= p < top for p in preds)
        ):
            accuracy = sum(p == t for p, t in zip(preds, labels, strict=True)) / len(labels)
        else:
            status, reason = "crashed", "crashed: malformed predictions from the sandbox"
    if status != "ok":
        params, accuracy = None, None
    if status == "ok":
        reason = "ok"
    seconds = time.monotonic() - started
    seconds = round(seconds, 4) if math.isfinite(seconds) and seconds > 0 else 0.0
    log = printable_log(reply.get("log"))
    return Outcome(status, reason or status, params, accuracy, seconds, isolation, log)


def resolve_isolation(isolation: str) -> str:
    """The isolation a job gets for `isolation` here ("bwrap" or "rlimits"), warning on fallback."""
    if isolation not in ("auto", "bwrap", "rlimits"):
        raise ValueError(f"isolation: {isolation!r} is not one of auto, bwrap, rlimits")
    asked, forced = isolation, ""
    if isolation == "auto":
        forced = os.environ.get(ENV_FORCE, "")
        if forced not in ("", "auto", "bwrap", "rlimits"):
            raise ValueError(f"{ENV_FORCE}: {forced!r} is not one of auto, bwrap, rlimits")
        isolation = forced if forced in ("bwrap", "rlimits") else "auto"
    problem = bwrap_problem() if isolation != "rlimits" else f"{ENV_FORCE}=rlimits"
    if isolation == "bwrap" and problem:
        raise SandboxError(f"isolation='bwrap' unavailable: {problem}")
    if asked == "auto" and problem:  # no silent weakening: say so, once, at start
        warn_fallback(problem)
    return "bwrap" if not problem else "rlimits"


@functools.cache
def warn_fallback(why: str) -> None:
    """Say once per process, on stderr, that candidates get the weaker fallback and why."""
    extra = (
        "own mount, pid, network and ipc namespaces"
        if not unshare_problem()
        else f"no namespaces ({unshare_problem()})"
    )
    warnings.warn(
        f"archrefine sandbox: not using bubblewrap ({why}); candidates run under the "
        f"rlimits fallback ({extra}); see docs/sandbox.md",
        SandboxWarning,
        stacklevel=4,
    )


@functools.cache
def warn_unfiltered(why: str) -> None:
    """Say once per process, on stderr, that jobs run without the seccomp filter, and why."""
    warnings.warn(
        f"archrefine sandbox: jobs run without a system-call filter ({why}); a job's socket "
        "buffers then escape its memory limit; pip install pyseccomp and have libseccomp2 "
        "(docs/sandbox.md)",
        SandboxWarning,
        stacklevel=4,
    )
