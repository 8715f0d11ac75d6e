"""Is the process that wrote a run record still there?

A run record (`run.json`) names the process that writes the run: its pid, host and, on Linux,
its start time in clock ticks since boot (`/proc/PID/stat`, field 22). A pid alone is not
enough: after a `kill -9` the number is free and another process may get it, so a record whose
pid is alive but started at another time is a dead run too. Zombies (killed, not yet reaped)
count as gone. Without /proc (macOS) the check falls back to `kill(pid, 0)`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

State = Literal["self", "alive", "gone", "elsewhere", "unknown"]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in ticks) from /proc/PID/stat, or None if it cannot be read."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the name may hold spaces and parentheses
    try:
        return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)
    except (IndexError, ValueError):
        return None


def _has_proc() -> bool:
    return Path("/proc/self/stat").is_file()


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None where /proc is missing)."""
    found = _stat(pid)
    return found[1] if found else None


def this_process() -> dict[str, Any]:
    """The fields a run record keeps to recognise its writer later: pid, host, pid_start."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "pid_start": process_start(pid)}


def state(info: dict[str, Any]) -> State:
    """What became of the process a run record names: `self` (this very process), `alive`,
    `gone`, `elsewhere` (another host: cannot tell) or `unknown` (no pid recorded)."""
    pid, host, start = info.get("pid"), info.get("host"), info.get("pid_start")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**31:
        return "unknown"
    if not isinstance(host, str):
        return "unknown"
    if host != socket.gethostname():
        return "elsewhere"
    known_start = isinstance(start, int) and not isinstance(start, bool)
    if _has_proc():
        found = _stat(pid)
        if found is None or found[0] in ("Z", "X"):
            return "gone"
        if known_start and found[1] != start:
            return "gone"  # the pid was reused by a later process
    elif not _kill_0(pid):
        return "gone"
    return "self" if pid == os.getpid() else "alive"


def _kill_0(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True
