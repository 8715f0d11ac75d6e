"""Shared by the benchmark scripts: which machine this is, and writing one's own section of
RESULTS.md without touching the others'."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    """Architecture, core count and CPU model, for the record next to every figure."""
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        model = found.group(1).strip() if found else model
    return f"{platform.machine()}, {os.cpu_count()} cores, {model}"


def update_results(name: str, section: str) -> None:
    """Replace (or append) the `## name` section of RESULTS.md, leaving the rest alone."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    from archrefine.core.store import atomic_write_text  # a killed benchmark leaves the old file

    atomic_write_text(RESULTS, text.rstrip("\n") + "\n")
