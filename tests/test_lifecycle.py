"""Run lifecycle (issue 13): file modes follow the umask, a dead run is told from a live one,
and every misuse of a directory or config ends in one line (exit 2) saying what to do."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from archrefine.cli import app
from archrefine.core import liveness
from archrefine.core.catalog import describe
from archrefine.core.config import SEED_MAX, Config, ConfigError, load_config
from archrefine.core.store import StoreError, interrupted_message, open_run, read_run
from archrefine.sim.budget import check_memory, estimate_bytes

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = ["--set", "trials=2", "--set", "loop.cycles=2"]


def cli(*args: str):
    """The command in this process: exit code, stdout, stderr."""
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


# ---- file modes follow the umask -------------------------------------------------------------


def _modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")}


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_every_file_written_follows_the_umask(tmp_path: Path, mask: int) -> None:
    out = tmp_path / "run" / "nested"
    script = textwrap.dedent("""
        import os, sqlite3, sys
        from pathlib import Path
        root, mask, args = Path(sys.argv[1]), int(sys.argv[2], 8), sys.argv[3:]
        os.umask(mask)
        from archrefine.cli import app
        from archrefine.core.store import create_file
        create_file(root / "x.sqlite")  # as the candidate store does, before SQLite opens it
        sqlite3.connect(root / "x.sqlite").execute("create table t (a)").connection.commit()
        sys.argv = ["archrefine", *args]
        app()
    """)
    p = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), oct(mask), "run", *TINY, "--out", str(out)],
        capture_output=True, text=True, env=env(), timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    modes = _modes(tmp_path)
    files = {k: v for k, v in modes.items() if (tmp_path / k).is_file()}
    dirs = {k: v for k, v in modes.items() if (tmp_path / k).is_dir()}
    names = ("run.json", "metrics.parquet", "trajectory.png", "checkpoint.bin", "config.toml")
    assert {*(f"run/nested/{n}" for n in names), "x.sqlite"} <= set(files)
    assert set(files.values()) == {0o666 & ~mask}, files
    assert set(dirs.values()) == {0o777 & ~mask}, dirs


def test_the_candidate_store_follows_the_umask(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    script = (
        "import os, sys; os.umask(0o002); from archrefine.real.candidates import CandidateStore;"
        "s = CandidateStore(sys.argv[1]); s.close()"
    )
    path = tmp_path / "candidates.sqlite"
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, env=env(), timeout=60)
    assert stat.S_IMODE(path.stat().st_mode) == 0o664  # SQLite alone: 0o644


# ---- a dead run is told from a live one ------------------------------------------------------

HOLD = (
    "import sys, time; from pathlib import Path; from archrefine.core.store import open_run;"
    "open_run(Path(sys.argv[1]), force=False, kind=sys.argv[2]); print('open', flush=True);"
    "time.sleep(60)"
)


def _holder(out: Path, kind: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out), kind], stdout=subprocess.PIPE,
                            text=True, env=env())  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
    return proc


@pytest.mark.parametrize("kind", ["run", "loop", "sweep", "reproduce"])
def test_a_killed_run_is_interrupted_and_the_refusal_says_what_to_do(tmp_path, kind) -> None:
    out = tmp_path / "r"
    proc = _holder(out, kind)
    try:
        info = read_run(out)
        assert info["pid"] == proc.pid and info["host"] == socket.gethostname()
        assert isinstance(info["pid_start"], int) and info["started"]
        assert describe(out)["status"] == "running"
        with pytest.raises(StoreError, match=f"still running as pid {proc.pid}"):
            open_run(out, force=True, kind="run")  # never two writers, even with --force
    finally:
        proc.kill()  # kill -9
        proc.wait()
    assert describe(out)["status"] == "interrupted"
    with pytest.raises(StoreError) as refused:
        open_run(out, force=False, kind="run")
    message = str(refused.value)
    assert "interrupted" in message and "--force" in message and "\n" not in message
    if kind != "reproduce":
        assert f"archrefine {kind} --resume {out}" in message
    open_run(out, force=True, kind="run")  # --force starts afresh
    assert read_run(out)["pid"] == os.getpid()


def test_a_reused_pid_another_host_or_no_pid(tmp_path: Path) -> None:
    me = liveness.this_process()
    cases = {
        "reused": ({**me, "pid_start": me["pid_start"] - 1} if me["pid_start"] else None,
                   "interrupted"),
        "other-host": ({**me, "host": socket.gethostname() + "-elsewhere"},
                       f"running (on {socket.gethostname()}-elsewhere)"),
        "old-record": ({}, "unknown (no pid recorded)"),
        "mine": (me, "running"),
    }  # fmt: skip
    for name, (fields, status) in cases.items():
        if fields is None:  # no /proc here: the start time cannot be checked
            continue
        (tmp_path / name).mkdir()
        record = {"kind": "run", "status": "running", "started": "2026-01-01T00:00:00+00:00"}
        (tmp_path / name / "run.json").write_text(json.dumps({**record, **fields}))
        assert describe(tmp_path / name)["status"] == status, name


def test_kill_9_of_the_cli_then_runs_lists_it_interrupted(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "archrefine", "run", "--set", "trials=300", "--set",
         "loop.cycles=400", "--set", "checkpoint.every_s=0", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(),
    )  # fmt: skip
    deadline = time.time() + 90
    while not (out / "checkpoint.bin").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    code, stdout, _ = cli("runs", str(tmp_path), "--json")
    assert code == 0 and json.loads(stdout)[0]["status"] == "interrupted"
    line = one_line_error(*cli("run", "--out", str(out))[::2])
    assert f"archrefine run --resume {out}" in line and "--force" in line


def test_ctrl_c_names_the_command_that_continues(tmp_path: Path) -> None:
    """As a terminal's Ctrl-C: SIGINT handled by the command, whatever the suite inherited (a
    suite started in the background by a shell ignores SIGINT, and so would its children)."""
    out = tmp_path / "stopped"
    proc = subprocess.Popen(
        [sys.executable, "-m", "archrefine", "run", "--set", "trials=300", "--set",
         "loop.cycles=400", "--set", "checkpoint.every_s=0", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.time() + 90
    while not (out / "checkpoint.bin").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"continue with `archrefine run --resume {out}`" in err and "Traceback" not in err


def test_interrupt_message_for_every_kind(tmp_path: Path) -> None:
    for kind in ("run", "loop", "sweep", "robustness"):
        open_run(tmp_path / kind, force=False, kind=kind)
        assert f"`archrefine {kind} --resume {tmp_path / kind}`" in interrupted_message()
    open_run(tmp_path / "rep", force=False, kind="reproduce")
    message = interrupted_message()  # reproduce has no --resume: start again
    assert "rep/ is unfinished: start" in message and "--force" in message


# ---- one-line errors ---------------------------------------------------------------------------


def test_a_config_of_the_other_kind_says_so(tmp_path: Path) -> None:
    loop_cfg = tmp_path / "loop.toml"
    loop_cfg.write_text('[generator]\nkind = "hf"\nmodel = "m"\n[evaluate]\nworkers = 1\n')
    sim_cfg = tmp_path / "sim.toml"
    sim_cfg.write_text(Config(trials=3).to_toml())
    for args in (("run", str(loop_cfg)), ("config", str(loop_cfg))):
        line = one_line_error(*cli(*args)[::2])
        assert "a real-loop config (it has evaluate, generator.model)" in line
        assert "not a simulator config: use it with archrefine loop" in line
    line = one_line_error(*cli("config", "--loop", str(sim_cfg))[::2])
    assert "a simulator config (it has trials, space, fitness), not a real-loop config" in line
    assert "archrefine run" in line
    assert not list(tmp_path.glob("runs"))


def test_resume_on_a_directory_of_another_kind_says_what_it_holds(tmp_path: Path) -> None:
    sim = tmp_path / "sim"
    assert cli("run", *TINY, "--out", str(sim))[0] == 0
    loop = tmp_path / "loop"
    loop.mkdir()
    (loop / "run.json").write_text(json.dumps({"kind": "loop", "status": "running"}))
    (loop / "config.toml").write_text('[generator]\nmodel = "m"\n')
    line = one_line_error(*cli("run", "--resume", str(loop))[::2])
    assert "holds a real loop" in line and f"archrefine loop --resume {loop}" in line
    line = one_line_error(*cli("sweep", "--resume", str(sim))[::2])
    assert "holds a simulator run" in line and f"archrefine run --resume {sim}" in line
    line = one_line_error(*cli("robustness", "--resume", str(sim))[::2])
    assert "holds a simulator run" in line
    pytest.importorskip("torch")
    pytest.importorskip("datasketch")
    line = one_line_error(*cli("loop", "--resume", str(sim))[::2])
    assert "holds a simulator run" in line and f"archrefine run --resume {sim}" in line


def test_config_values_of_the_wrong_type_or_range_are_refused() -> None:
    for override, word in (
        ("space.length=true", "valid integer, not a boolean"),
        ("trials=1.5", "fractional part"),
        ('trials="3"', "valid integer, not a string"),
        ("schedule.rate=true", "valid number, not a boolean"),
        (f"seed={2**128 + 1}", "less than or equal to"),
        (f"seed={SEED_MAX + 1}", "less than or equal to"),
        ("seed=-1", "greater than or equal to 0"),
    ):
        with pytest.raises(ConfigError, match=word):
            Config().with_overrides([override])
    assert Config().with_overrides([f"seed={SEED_MAX}"]).seed == SEED_MAX
    assert load_config(None, ["schedule.rate=1", "trials=3"]).schedule.rate == 1.0
    line = one_line_error(*cli("run", "--set", "space.length=true")[::2])
    assert "space.length" in line


def test_the_real_config_is_as_strict() -> None:
    pytest.importorskip("torch")
    from archrefine.real.config import RealConfig

    for override in ("evaluate.train=1", "loop.population=true", f"seed={2**64}"):
        with pytest.raises(ConfigError):
            RealConfig().with_overrides([override])


def test_a_run_too_large_for_memory_is_refused_before_it_starts(tmp_path: Path) -> None:
    cfg = Config(trials=100, seed=0).with_overrides({"loop.cycles": 100})
    need = estimate_bytes(cfg)
    assert 100 * (50 + 10 * 100) * 15 * 2 < need < 10 * 2**20  # archive + metrics, a few MB
    check_memory(cfg, available=need)
    with pytest.raises(ConfigError, match=r"needs at least 0\.0 GiB"):
        check_memory(cfg, available=need - 1)
    out = tmp_path / "big"
    args = ["--set", "trials=100000", "--set", "loop.cycles=10000", "--out", str(out)]
    line = one_line_error(*cli("run", *args)[::2])
    assert "GiB" in line and "trials=100000" in line and not out.exists()


@pytest.mark.parametrize(
    "content,word",
    [
        (pickle.dumps({"kind": "run", "status": "running"}), "not UTF-8"),
        (b'{"kind": "run", "status": "runn', "not valid JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"kind": "run", "status": "running", "resumed": "abc"}', "field 'resumed'"),
        (b'{"kind": "run", "status": "running", "pid": true}', "field 'pid'"),
    ],
)
def test_a_damaged_run_json_is_one_line_and_left_alone(tmp_path: Path, content, word) -> None:
    out = tmp_path / "r"
    assert cli("run", *TINY, "--out", str(out))[0] == 0
    (out / "run.json").write_bytes(content)
    before = hashlib.sha256(content).hexdigest()
    line = one_line_error(*cli("run", "--resume", str(out))[::2])
    assert str(out / "run.json") in line and word in line
    assert hashlib.sha256((out / "run.json").read_bytes()).hexdigest() == before
    assert describe(out)["status"].startswith("unreadable: run.json")
    assert "--force" in one_line_error(*cli("run", *TINY, "--out", str(out))[::2])


def test_resume_of_a_finished_run_does_nothing(tmp_path: Path) -> None:
    out = tmp_path / "r"
    assert cli("run", *TINY, "--out", str(out))[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, _, err = cli("run", "--resume", str(out))
    assert code == 0 and "nothing to do" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_loop_resume_of_a_finished_loop_leaves_its_outputs_alone(tmp_path, monkeypatch) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("datasketch")
    from archrefine.real import RealConfig, finished, run
    from archrefine.sandbox.sandbox import Outcome

    class Pool:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def map(self, codes, **options):
            return [Outcome("ok", "", 100, 0.5 if "train" in options else None, 0.1, "fake")
                    for _ in codes]  # fmt: skip

    class Scripted:
        def generate(self, prompts, sampling, seed):
            net = "import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n    def "
            net += "forward(self, x):\n        return x.flatten(1)[:, :10] * {}\n"
            return [f"```python\n{net.format(seed + i)}```" for i in range(len(prompts))]

        def refine(self, pairs, cycle):
            return None

        def save(self, directory):
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "state.txt").write_text("x")

        def load(self, directory):
            pass

        def close(self):
            pass

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr("archrefine.real.loop.evaluator", lambda config: Pool())
    cfg = RealConfig().with_overrides({"loop.cycles": 1, "loop.population": 2, "loop.top_k": 1,
                                       "evaluate.max_train": 20})  # fmt: skip
    out = tmp_path / "loop"
    run(cfg, out, generator=Scripted())
    assert finished(out, cfg)

    def snapshot() -> dict[str, tuple[int, str]]:
        files = [p for p in out.rglob("*") if p.is_file()]
        return {p.as_posix(): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
                for p in files}  # fmt: skip

    before = snapshot()
    code, _, err = cli("loop", "--resume", str(out))
    assert code == 0 and "nothing to do" in err, err
    again = run(cfg, out, generator=Scripted(), resume=True)  # the library too
    assert list(again.cycle) == [1]
    assert snapshot() == before
