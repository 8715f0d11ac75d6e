"""Red-team variants for the real loop beyond tests/test_loop_faults.py: hostile replies that
reach the store and later prompts, a run directory damaged or swapped in other ways (bit flips
inside rows, another run's store, links, FIFOs, a read-only mount, an edited state.json), an
environment that would weaken the sandbox at resume, and kill -9 at named moments (fine-tuning,
saving the generator, between the store's commit and the metrics, the report) and at a seeded
random store commit (docs/real-loop.md names each guarantee with its test)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("datasketch")

from test_loop_faults import (  # noqa: E402
    NET,
    FakePool,
    ScriptedGenerator,
    _env,
    _killed,  # noqa: F401 - a fixture
    _own_key,  # noqa: F401 - a fixture
    cands,
    config,
    fake,
    fenced,
    killed_after_cycle_1,  # noqa: F401 - a fixture
    stopped,  # noqa: F401 - a fixture
)

from archrefine.core.config import load_config  # noqa: E402
from archrefine.core.store import StoreError  # noqa: E402
from archrefine.real import RealConfig, completed_cycles, run  # noqa: E402
from archrefine.real.candidates import CandidateStore, CandidateStoreError  # noqa: E402

pytestmark = [pytest.mark.torch]


def net(c: int, extra: str = "", comment: str = "") -> str:
    return NET.format(tag=comment or f"c{c}", c=c) + extra


# ---- hostile replies reach the store and the next prompts intact -----------------------------

HOSTILE = {
    "surrogate": "```python\n" + net(3, "s = '" + chr(0xD800) + "'\n") + "```\n",
    "nul": f"```python\n{net(4).replace('import torch', 'import torch' + chr(0))}```\n",
    "crlf": f"```python\n{net(5)}```\n".replace("\n", "\r\n"),
    "unclosed": f"```python\n{net(6)}",
    "many-blocks": f"```python\n{net(7)}```\n" * 300,
    "injection": f"```python\n{net(8, comment='$task ${references} $$ ${ $0')}```\n",
    "fence-in-code": f"```python\n{net(9, 'doc = 1  # ``` end' + chr(10))}```\n",
    "6000-lines": f"```python\n{net(11)}" + "z = 3\n" * 6000 + "```\n",
    "surrogates-only": "\ud800\udfff" * 10,
}


def test_hostile_replies_are_stored_and_cannot_break_later_prompts(
    tmp_path: Path, monkeypatch
) -> None:
    fake(monkeypatch, FakePool())
    n = len(HOSTILE)
    cfg = config(**{"loop.population": n, "loop.top_k": n, "prompt.references": n})
    out = tmp_path / "run"
    gen = ScriptedGenerator(list(HOSTILE.values()))
    run(cfg, out, generator=gen)
    rows = cands(out)
    assert len(rows) == 2 * n and (rows.status != "pending").all()
    first = dict(zip(HOSTILE, rows[rows.cycle == 1].itertuples(), strict=True))
    assert first["surrogate"].status == "ok" and "\\ud800" in first["surrogate"].code
    assert first["nul"].status == "rejected" and "null bytes" in first["nul"].reason
    assert first["6000-lines"].status == "rejected" and "lines" in first["6000-lines"].reason
    for name in ("crlf", "unclosed", "many-blocks", "injection", "fence-in-code"):
        assert first[name].status == "ok", (name, first[name].reason)
    for text in rows.response.dropna():
        text.encode("utf-8")  # valid UTF-8 everywhere: SQLite, JSON, the sandbox's pipe
    # the selected code, placeholders and fences included, is shown verbatim in cycle 2
    prompts = gen.calls[-1]
    assert all("${references}" in p and "$$ ${ $0" in p and "\\ud800" in p for p in prompts)
    assert all("Reference architectures from earlier rounds" in p for p in prompts)


# ---- a damaged or swapped run directory is never continued ------------------------------------


def _checkpoint(path: Path) -> None:
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw.close()


def _flip_inside_a_row(out: Path) -> None:
    """Change one character of a stored candidate's code: a valid file, a different row."""
    db = out / "candidates.sqlite"
    _checkpoint(db)
    data = bytearray(db.read_bytes())
    at = data.index(b"nn.Conv2d(3, ")
    data[at + 13] = ord("9") if data[at + 13] != ord("9") else ord("8")
    db.write_bytes(bytes(data))


def _flip_random_bits(out: Path, seed: int) -> None:
    db = out / "candidates.sqlite"
    _checkpoint(db)
    data = bytearray(db.read_bytes())
    rng = random.Random(seed)
    for _ in range(50):
        data[rng.randrange(100, len(data))] ^= 1 << rng.randrange(8)
    db.write_bytes(bytes(data))


def _another_runs_store(out: Path, tmp: Path) -> None:
    other = tmp / "other"
    gen = ScriptedGenerator([fenced("OTHER", 3), fenced("O", 5)])
    run(config(seed=7, **{"loop.cycles": 1}), other, generator=gen)
    for suffix in ("", "-wal", "-shm"):
        (out / f"candidates.sqlite{suffix}").unlink(missing_ok=True)
        if (other / f"candidates.sqlite{suffix}").exists():
            (out / f"candidates.sqlite{suffix}").write_bytes(
                (other / f"candidates.sqlite{suffix}").read_bytes()
            )


def _state(**change) -> object:
    def edit(out: Path, tmp: Path) -> None:
        state = json.loads((out / "state.json").read_text())
        (out / "state.json").write_text(json.dumps({**state, **change}))

    return edit


def _replace(name: str, how: str) -> object:
    def damage(out: Path, tmp: Path) -> None:
        path = out / name
        path.unlink()
        if how == "dir":
            path.mkdir()
        elif how == "fifo":
            os.mkfifo(path)
        else:
            path.symlink_to(how)

    return damage


@pytest.mark.parametrize(
    "damage, names",
    [
        (lambda out, tmp: _flip_inside_a_row(out), "candidates.sqlite"),
        (lambda out, tmp: _flip_random_bits(out, 1), "candidates.sqlite"),
        (lambda out, tmp: _flip_random_bits(out, 2), "candidates.sqlite"),
        (_another_runs_store, "candidates.sqlite"),
        (lambda out, tmp: (out / "metrics.parquet").unlink(), "metrics.parquet"),
        (lambda out, tmp: (out / "metrics.parquet").write_bytes(b"PAR1 junk PAR1"), "metrics"),
        (_state(completed=9), "state.json"),
        (_state(completed=-1), "state.json"),
        (_state(completed="1"), "state.json"),
        (_replace("candidates.sqlite", "dir"), "candidates.sqlite"),
        (_replace("candidates.sqlite", "/etc/passwd"), "candidates.sqlite"),
        (_replace("prompt.txt", "/etc/hostname"), "prompt.txt"),
        (_replace("prompt.txt", "fifo"), "prompt.txt"),
        (_replace("run.json", "/dev/zero"), "run.json"),
        (_replace("generator/cycle-001/scripted.txt", "/etc/hostname"), "scripted.txt"),
    ],
    ids=[
        "flip-in-row",
        "flips-1",
        "flips-2",
        "other-run",
        "metrics-gone",
        "metrics-junk",
        "state-9",
        "state-neg",
        "state-str",
        "db-dir",
        "db-passwd",
        "prompt-link",
        "prompt-fifo",
        "runjson-dev-zero",
        "generator-link",
    ],  # fmt: skip
)
def test_a_damaged_or_swapped_run_is_refused_in_one_line(
    killed_after_cycle_1: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch,
    damage,
    names: str,
) -> None:
    out = killed_after_cycle_1
    damage(out, tmp_path)
    kept = {p: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.is_symlink()}
    fake(monkeypatch, FakePool())
    with pytest.raises((CandidateStoreError, StoreError)) as err:
        run(config(), out, generator=ScriptedGenerator([fenced("GOOD", 3)]), resume=True)
    text = str(err.value)
    assert "\n" not in text and names in text, text
    assert any(w in text for w in ("recover", "restore", "--force", "put back")), text
    for path, data in kept.items():  # nothing written is lost or changed
        if path.name not in ("run.json",):
            assert path.read_bytes() == data, path


def _cli_resume(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archrefine", "loop", "--resume", str(out)],
                          capture_output=True, text=True, env=_env(), timeout=120)  # fmt: skip


def test_the_cli_refuses_a_fifo_config_and_a_read_only_run_without_hanging(
    killed_after_cycle_1: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = killed_after_cycle_1
    copy = tmp_path / "fifo"
    subprocess.run(["cp", "-a", str(out), str(copy)], check=True)
    _replace("config.toml", "fifo")(copy, tmp_path)
    result = _cli_resume(copy)
    assert result.returncode == 2 and "config.toml is not a regular file" in result.stderr
    assert "Traceback" not in result.stderr
    if os.geteuid() != 0 or subprocess.run(["mount", "--bind", str(out), str(out)]).returncode:
        pytest.skip("needs root to mount the run read-only")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(out)], check=True)
        result = _cli_resume(out)
        assert result.returncode == 2 and "cannot write there" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error:")
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False)
    assert completed_cycles(out) == 1


def test_the_environment_cannot_weaken_the_sandbox_at_resume(
    stopped: Path,  # noqa: F811
    monkeypatch,
) -> None:
    info = json.loads((stopped / "run.json").read_text())
    if not info["isolation"].startswith("bwrap"):
        pytest.skip("bwrap does not work here: the run already has the weakest isolation")
    cfg = load_config(stopped / "config.toml", model=RealConfig)
    monkeypatch.setenv("ARCHREFINE_SANDBOX", "rlimits")
    with pytest.raises(StoreError, match="would resume with 'rlimits"):
        run(cfg, stopped, generator=ScriptedGenerator([fenced("GOOD", 3)]), resume=True)


# ---- kill -9 at named moments, and at a seeded random store commit -----------------------------

KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    import test_loop_faults as t
    import archrefine.real as real
    import archrefine.real.loop as loop
    from archrefine.real.candidates import CandidateStore
    from archrefine.real.text import LearnedTextGenerator

    loop.evaluator = lambda config: t.FakePool()
    moment, die = sys.argv[2], lambda: os.kill(os.getpid(), signal.SIGKILL)

    def wrap(owner, name, when):
        inner = getattr(owner, name)
        def hooked(*args, **kwargs):
            if (w := when(*args, **kwargs)) == "before":
                die()
            out = inner(*args, **kwargs)
            if w == "after":
                die()
            return out
        setattr(owner, name, hooked)

    if moment == "refine":  # during fine-tuning: the step ran, its state is not saved yet
        wrap(LearnedTextGenerator, "refine", lambda s, p, c: "after" if c == 2 else None)
    elif moment == "metrics":  # the store committed the cycle, metrics.parquet not written
        wrap(loop, "write_parquet", lambda p, f: "before" if len(f) == 2 else None)
    elif moment == "report":  # every cycle complete, the report not written
        import archrefine.real.report as report
        wrap(report, "write_report", lambda *a, **k: "before")
    else:  # commit-N: the N-th write transaction of the store
        count, n = [0], int(moment.split("-")[1])
        def nth(*a, **k):
            count[0] += 1
            return "after" if count[0] == n else None
        for name in ("add_many", "update", "mark_selected"):
            wrap(CandidateStore, name, nth)
    real.run(t.config(), Path(sys.argv[1]))
    """
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame]:
    out = tmp_path_factory.mktemp("whole") / "run"
    with pytest.MonkeyPatch.context() as mp:
        fake(mp, FakePool())
        run(config(), out)
    return _snapshot(out)


def _snapshot(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    with CandidateStore(out / "candidates.sqlite") as store:
        frame = store.to_frame().drop(columns=["created", "seconds"])
    return frame, pd.read_parquet(out / "metrics.parquet").drop(columns=["seconds"])


SEEDED = f"commit-{random.Random(5).randint(2, 25)}"  # one of 26 store commits


@pytest.mark.parametrize("moment", ["refine", "metrics", "report", SEEDED])
def test_kill_9_at_named_moments_resumes_exactly(
    uninterrupted, tmp_path: Path, monkeypatch, moment: str
) -> None:
    out = tmp_path / "run"
    tests = str(Path(__file__).parent)
    proc = subprocess.run([sys.executable, "-c", KILLER, str(out), moment, tests], env=_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    fake(monkeypatch, FakePool())
    run(load_config(out / "config.toml", model=RealConfig), out, resume=True)
    cands_now, metrics_now = _snapshot(out)
    pd.testing.assert_frame_equal(cands_now, uninterrupted[0])
    pd.testing.assert_frame_equal(metrics_now, uninterrupted[1])
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
