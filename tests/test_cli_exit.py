"""The console script's quick exit (`cli.common._end_process`): same status, same output,
same `atexit` callbacks and threads as a normal exit; only the interpreter's teardown is skipped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
mark = Path(sys.argv[1])
atexit.register(lambda: mark.with_suffix(".atexit").write_text("ran"))
if sys.argv[2] == "thread":  # a worker still busy when the command returns
    def late():
        time.sleep(0.5)
        mark.with_suffix(".thread").write_text("finished")
    threading.Thread(target=late).start()
sys.argv = ["archrefine", *sys.argv[3:]]
from archrefine.cli import main
main()
raise SystemExit("main returned")  # never: main always ends the process
"""


def _run(tmp_path: Path, mode: str, *args: str) -> subprocess.CompletedProcess:
    mark = tmp_path / "mark"
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(mark), mode, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_success_keeps_the_output_status_and_exit_callbacks(tmp_path: Path) -> None:
    done = _run(tmp_path, "plain", "config", "--set", "trials=3")
    assert done.returncode == 0, done.stderr
    assert "trials = 3" in done.stdout  # printed to a pipe (buffered): flushed before the exit
    assert (tmp_path / "mark.atexit").read_text() == "ran"


def test_an_error_keeps_its_status_and_one_line(tmp_path: Path) -> None:
    done = _run(tmp_path, "plain", "config", "--set", "trials=-4")
    assert done.returncode == 2
    assert "trials" in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "mark.atexit").read_text() == "ran"


def test_a_thread_still_working_is_waited_for(tmp_path: Path) -> None:
    done = _run(tmp_path, "thread", "config")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "mark.thread").read_text() == "finished"
    assert (tmp_path / "mark.atexit").read_text() == "ran"
