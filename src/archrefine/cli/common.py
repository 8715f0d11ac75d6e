"""What every command module shares: the app, consoles, options, one-line errors, progress.

Its own module so that each command group (commands.py, real.py, sweep.py, ...) imports these
public names from here and no command module reaches into another's private ones.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from archrefine.core.config import ConfigError
from archrefine.core.store import StoreError

USER_ERRORS = (ConfigError, StoreError)
"""Problems of input or environment: reported in one line, never as a traceback; with the
classes of `LAZY_ERRORS`, looked up only once their (heavy) module has loaded: an exception of a
module that never loaded was never raised."""
LAZY_ERRORS = {
    "archrefine.real.candidates": "CandidateStoreError",
    "archrefine.real.text": "GeneratorUnavailable",
    "archrefine.sandbox.jobs": "SandboxError",
}


def user_errors() -> tuple[type[BaseException], ...]:
    """USER_ERRORS plus the lazily loaded modules' error classes."""
    loaded = [getattr(sys.modules[m], name) for m, name in LAZY_ERRORS.items() if m in sys.modules]
    return (*USER_ERRORS, *loaded)


def one_line_errors(fn):
    """Bad input ends a command with one line naming the problem, and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MemoryError:
            print("error: out of memory; lower trials or loop.cycles", file=sys.stderr)
            raise typer.Exit(2) from None
        except Exception as err:
            if isinstance(err, OSError) and err.filename is not None:  # a path, not a bug
                print(f"error: {os_error(err)}", file=sys.stderr)
                raise typer.Exit(2) from None
            if not isinstance(err, user_errors()):
                raise
            print(f"error: {err}", file=sys.stderr)  # one line, never wrapped
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            from archrefine.core.store import interrupted_message

            print(interrupted_message(), file=sys.stderr)  # names the command that continues
            raise typer.Exit(130) from None

    return wrapper


def os_error(err: OSError) -> str:
    """An OSError on a path the command reads or writes (a directory where a results file
    belongs, a file where a folder does, no permission, a full disk) as one line naming the
    path: the destination of a rename (`filename2`), else the file."""
    path = err.filename2 if err.filename2 is not None else err.filename
    why = "a folder on its path is a file" if isinstance(err, NotADirectoryError) else None
    return f"{path}: cannot use it ({why or err.strerror or type(err).__name__})"


@contextlib.contextmanager
def output_file(path: Path, suffix: str) -> Iterator[None]:
    """Around the writing of a file the user named (`--out FILE`): a path that cannot hold it
    (a directory, inside a file, read-only, too long) is one line, not a traceback; nor is a
    file there that is another kind than the `suffix` written (a run's metrics.parquet,
    config.toml) or a result its run directory lists, which would be lost."""
    if path.is_file():
        if path.name in _run_files(path.parent):
            raise StoreError(f"{path}: a file of the run in {path.parent}/; choose another --out")
        if path.suffix.lower() != suffix:
            raise StoreError(f"{path}: exists and is not a {suffix} file; choose another --out")
    try:
        yield
    except OSError as err:
        parent = isinstance(err, (FileExistsError, NotADirectoryError))  # mkdir of its folder
        why = "a folder on its path is a file" if parent else err.strerror or err
        raise StoreError(f"{path}: cannot write it there ({why})") from None


def _run_files(directory: Path) -> set[str]:
    """The files a run directory's run.json lists as its results, and run.json itself."""
    from archrefine.core.store import read_run

    if not (directory / "run.json").exists():
        return set()
    try:
        return {"run.json", *read_run(directory).get("files", [])}
    except StoreError:
        return {"run.json"}


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Simulate and run LLM-driven architecture refinement loops.",
)
console = Console(stderr=True)
out_console = Console()

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: dotted.key=value (repeatable)."),
]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output directory.")]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Reuse a non-empty output directory (an earlier run's results there are removed).",
    ),
]
TrackOpt = Annotated[
    str | None,
    typer.Option(help="Log the finished run: mlflow or none (default: tracking.backend)."),
]


def tracker(cfg, track: str | None):
    """The command's experiment tracker (docs/tracking.md), made before anything is written:
    a missing MLflow stops the command here; later tracking failures are only warnings."""
    from archrefine.report.tracking import start

    return start(cfg.tracking, track)


def need_real_extra() -> None:
    """The real loop's dependencies are an extra: say so in one line instead of a traceback."""
    import importlib.util

    missing = [m for m in ("torch", "datasketch", "sklearn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f'the real loop needs {", ".join(missing)}: pip install "torch==2.13.0" '
            f"-e \".[real]\" (or pip install 'archrefine[real]')"
        )


def progress_bar() -> Progress:
    """A progress bar on stderr, drawn only on a terminal (never in logs or pipes)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )


def write_report(out: Path) -> None:
    """report.html beside a finished run's files (docs/report.md); a failure is one warning
    line, never a failed run: the results are already written."""
    from archrefine.report.html import write_safely

    with report_warnings():
        problem = write_safely(out)
    if problem is not None:
        print(f"warning: report.html not written: {problem}", file=sys.stderr)


@contextlib.contextmanager
def report_warnings() -> Iterator[None]:
    """What the report left out (`ReportWarning`s) as one `warning: ...` line each."""
    import warnings

    from archrefine.report.source import ReportWarning

    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ReportWarning)
            yield
    finally:  # printed once the filters are back: any other warning as Python shows it
        for w in caught:
            if issubclass(w.category, ReportWarning):
                print(f"warning: {w.message}", file=sys.stderr)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def main() -> None:
    """The console-script entry point: the command, then a quick exit (`_end_process`). A
    usage error (an unknown option, a value of the wrong type, a missing argument) is one line
    like every other error, not a boxed panel; with no arguments at all, the help."""
    try:
        code = app(standalone_mode=len(sys.argv) < 2)
    except SystemExit as done:
        if done.code is not None and not isinstance(done.code, int):
            raise  # a message to print: the interpreter's own exit prints it
        code = done.code or 0
    except Exception as err:
        if not _is_usage_error(err):
            raise
        code = _usage_error(err)
    _end_process(code if isinstance(code, int) else 0)


def _is_usage_error(err: Exception) -> bool:
    """A click exception, by what it does rather than its class: typer may carry its own copy
    of click, whose exceptions are not `click.ClickException`."""
    return callable(getattr(err, "format_message", None)) and isinstance(
        getattr(err, "exit_code", None), int
    )


def _usage_error(err: Any) -> int:
    """Say a usage error in one line, naming the command and where its help is; its exit code."""
    command = getattr(getattr(err, "ctx", None), "command_path", "") or "archrefine"
    message = " ".join(str(err.format_message()).split())
    print(f"error: {command}: {message} (see {command} --help)", file=sys.stderr)
    return err.exit_code


def _end_process(code: int) -> None:
    """End the process as the interpreter would, without its final teardown.

    The command has written and closed its files; what is left is what a normal exit does:
    join the threads that are still working, run the `atexit` callbacks (logging's flush,
    multiprocessing's joins, ray's shutdown, ...), flush stdout and stderr, and then free every
    module and object one by one, which after a large run takes ~0.2 s and changes nothing.
    This skips only that last step. Where the interpreter lacks the hook that runs the
    callbacks, or a thread other than a daemon is still alive, it exits normally.
    """
    import atexit
    import contextlib
    import os
    import threading

    run_callbacks = getattr(atexit, "_run_exitfuncs", None)
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if run_callbacks is None or any(not t.daemon for t in others):
        sys.exit(code)
    run_callbacks()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing left to say
            stream.flush()
    os._exit(code)
