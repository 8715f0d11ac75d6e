"""The real loop under faults that are not the loop's: poison candidates and outcomes, a broken
sandbox, a damaged or full store, a tampered run directory, a misbehaving server.

Most tests replace the sandbox with `FakePool` (the outcomes a hostile or broken sandbox could
report, instantly) and the model with `ScriptedGenerator`; the real sandbox, the CLI and a
kill -9 appear where the fault needs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("datasketch")

from archrefine.core.config import load_config  # noqa: E402
from archrefine.core.store import StoreError  # noqa: E402
from archrefine.real import RealConfig, completed_cycles, run  # noqa: E402
from archrefine.real.candidates import CandidateStore, CandidateStoreError  # noqa: E402
from archrefine.real.text import GeneratorUnavailable  # noqa: E402
from archrefine.sandbox.sandbox import Outcome, SandboxError  # noqa: E402

pytestmark = [pytest.mark.torch]

SRC = str(Path(__file__).resolve().parents[1] / "src")
NET = """import torch
from torch import nn


class Net(nn.Module):  # {tag}
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, {c}, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                               nn.Flatten(), nn.Linear({c}, 10))

    def forward(self, x):
        return self.f(x)
"""


def fenced(tag: str, c: int) -> str:
    return f"```python\n{NET.format(tag=tag, c=c)}```\n"


class ScriptedGenerator:
    def __init__(self, answers: list[str], fail_after: int | None = None) -> None:
        self.answers, self.fail_after, self.calls = answers, fail_after, []

    def generate(self, prompts, sampling, seed):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise GeneratorUnavailable("scripted stop")
        self.calls.append(list(prompts))
        k = sum(len(c) for c in self.calls[:-1])
        return [self.answers[(k + i) % len(self.answers)] for i in range(len(prompts))]

    def refine(self, pairs, cycle):
        return None

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "scripted.txt").write_text("x")

    def load(self, directory: Path) -> None:
        pass

    def close(self) -> None:
        pass


class FakePool:
    """Outcomes by the tag in each source: HUGE (params 2**70), RAISE (the batch raises
    RecursionError, as a too deeply nested reply did), NAN (accuracy NaN), STATUS (an unknown
    status), CRASH (crashed); `broken` makes every call (probes too) fail as a sandbox that
    cannot start or whose memory limit is unusable would."""

    def __init__(self, broken: str = "") -> None:
        self.broken, self.calls = broken, 0

    def __enter__(self) -> FakePool:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def map(self, codes, **options):
        self.calls += 1
        if self.broken == "start":
            raise SandboxError("sandbox worker failed to start (bwrap): no user namespaces")
        if self.broken == "memory":
            return [Outcome("crashed", "crashed: exited with code 70", None, None, 0.1, "fake")]
        if any("RAISE" in c for c in codes):
            raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")
        out = []
        for c in codes:
            o = Outcome("ok", "", 1234, 0.5 if "train" in options else None, 0.1, "fake")
            if "HUGE" in c:
                o = Outcome("ok", "", 2**70, o.accuracy, 0.1, "fake")
            elif "NAN" in c:
                o = Outcome("ok", "", 10, float("nan"), 0.1, "fake")
            elif "STATUS" in c:
                o = Outcome("great", "", 10, 0.5, 0.1, "fake")  # type: ignore[arg-type]
            elif "CRASH" in c:
                o = Outcome("crashed", "crashed: segfault", None, None, 0.1, "fake")
            out.append(o)
        return out


@pytest.fixture(autouse=True, scope="module")
def _own_key(tmp_path_factory):
    """One run-signing key for the module's runs (its own, not the user's)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg")))
        yield


def fake(monkeypatch, pool: FakePool) -> FakePool:
    monkeypatch.setattr("archrefine.real.loop.evaluator", lambda config: pool)
    return pool


def config(**extra) -> RealConfig:
    base = {"loop.cycles": 2, "loop.population": 5, "loop.top_k": 2, "evaluate.max_train": 50,
            "generator.retries": 0}  # fmt: skip
    return RealConfig().with_overrides({**base, **extra})


def cands(out: Path) -> pd.DataFrame:
    with CandidateStore(out / "candidates.sqlite") as store:
        return store.to_frame()


# ---- poison candidates and outcomes (finding 2) --------------------------------------------


def test_poison_outcomes_crash_only_their_candidate_and_resume_is_clean(
    tmp_path: Path, monkeypatch
) -> None:
    tags = ["GOOD", "HUGE", "RAISE", "NAN", "STATUS"]
    gen = ScriptedGenerator([fenced(t, 2 + i) for i, t in enumerate(tags)])
    fake(monkeypatch, FakePool())
    out = tmp_path / "run"
    run(config(), out, generator=gen)
    rows = cands(out)
    assert (rows.status != "pending").all() and len(rows) == 10
    by = {t: rows[rows.code.str.contains(t, na=False)].iloc[0] for t in tags}
    assert by["GOOD"].status == "ok" and by["HUGE"].status == "ok"
    with CandidateStore(out / "candidates.sqlite") as store:  # exact, beyond 64 bits
        assert store.cycle_rows(1)[1]["params"] == 2**70
    assert by["RAISE"].status == "crashed" and "RecursionError" in by["RAISE"].reason
    assert by["NAN"].status == "crashed" and "accuracy" in by["NAN"].reason
    assert by["STATUS"].status == "crashed" and "malformed outcome" in by["STATUS"].reason
    assert all("\n" not in r for r in rows.reason.dropna())
    again = run(config(), out, generator=gen, resume=True)  # nothing pending: resumes cleanly
    assert list(again.cycle) == [1, 2]


def test_deeply_nested_responses_cannot_end_the_run(tmp_path: Path, monkeypatch) -> None:
    deep = "x = " + "[" * 100_000 + "]" * 100_000 + "\n"
    answers = [
        fenced("GOOD", 3),
        f"```python\n{deep}{NET.format(tag='DEEP', c=4)}```\n",
        "{" * 50_000 + "}" * 50_000,  # a JSON-looking reply with no code
        "```python\n" + "(" * 3000 + "1" + ")" * 3000 + "\n```\n",
        "x" * 1_500_000,  # longer than a response may be
    ]
    fake(monkeypatch, FakePool())
    out = tmp_path / "run"
    run(config(**{"loop.cycles": 1}), out, generator=ScriptedGenerator(answers))
    rows = cands(out)
    assert len(rows) == 5 and (rows.status != "pending").all()
    assert rows.status.iloc[0] == "ok"
    assert set(rows.status.iloc[1:]) <= {"crashed", "rejected", "no_code", "invalid"}
    assert rows.status.iloc[4] == "rejected" and "1,500,000 characters" in rows.reason.iloc[4]


def test_a_real_parameter_count_beyond_64_bits_is_stored(tmp_path: Path) -> None:
    """Pure torch: two expanded parameters of 2**62 elements each, in the real sandbox."""
    code = (
        "import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.a = nn.Parameter(torch.zeros(1).expand(2**31, 2**31))\n"
        "        self.b = nn.Parameter(torch.zeros(1).expand(2**31, 2**31))\n"
        "        self.f = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))\n\n"
        "    def forward(self, x):\n        return self.f(x)\n"
    )
    cfg = config(**{"loop.cycles": 1, "loop.population": 1, "loop.top_k": 1,
                    "evaluate.train": False, "evaluate.timeout_s": 30})  # fmt: skip
    out = tmp_path / "run"
    run(cfg, out, generator=ScriptedGenerator([f"```python\n{code}```\n"]))
    row = cands(out).iloc[0]
    assert row.status != "pending"
    if row.status == "ok":  # the sandbox may also refuse it; if it counts it, exactly
        with CandidateStore(out / "candidates.sqlite") as store:
            assert store.cycle_rows(1)[0]["params"] >= 2**63


def test_a_generator_answering_too_few_responses_stops_cleanly(tmp_path, monkeypatch) -> None:
    class Short(ScriptedGenerator):
        def generate(self, prompts, sampling, seed):
            return super().generate(prompts, sampling, seed)[:-1]

    fake(monkeypatch, FakePool())
    with pytest.raises(GeneratorUnavailable, match="answered 4 for 5 prompts"):
        run(config(), tmp_path / "run", generator=Short([fenced("GOOD", 3)]))


# ---- the sandbox's failures are not the candidates' (finding 11) ----------------------------


@pytest.mark.parametrize("broken", ["start", "memory"])
def test_a_broken_sandbox_stops_the_run_and_blames_no_candidate(
    tmp_path: Path, monkeypatch, broken: str
) -> None:
    gen = ScriptedGenerator([fenced("GOOD", 3), fenced("ALSO", 4)])
    out = tmp_path / "run"
    fake(monkeypatch, FakePool(broken))
    with pytest.raises(SandboxError, match="not the candidates") as err:
        run(config(), out, generator=gen)
    assert "\n" not in str(err.value)
    assert (cands(out).status == "pending").all()  # not recorded as the candidates' fault
    fake(monkeypatch, FakePool())  # fixed: resume evaluates them
    run(config(), out, generator=gen, resume=True)
    assert (cands(out).status == "ok").all()


def test_candidates_that_crash_on_a_working_sandbox_are_theirs(tmp_path, monkeypatch) -> None:
    pool = fake(monkeypatch, FakePool())
    out = tmp_path / "run"
    run(config(**{"loop.cycles": 1}), out, generator=ScriptedGenerator([fenced("CRASH", 3)]))
    assert (cands(out).status == "crashed").all() and pool.calls > 1  # probed, then blamed


def test_resume_overrides_need_resume() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "archrefine", "loop", "--trust-config"],
        capture_output=True, text=True, env=_env(), timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "only with --resume" in result.stderr


def test_an_absurd_memory_limit_is_a_config_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "archrefine", "loop", "--set", "evaluate.memory_mb=1e20"],
        capture_output=True, text=True, env=_env(), timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "evaluate.memory_mb" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ---- a store that detects damage; disk full (finding 9) -------------------------------------

DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    import test_loop_faults as t
    from archrefine.real import run

    class Pytest:  # monkeypatch stand-in
        def setattr(self, name, value):
            import archrefine.real.loop as loop
            setattr(loop, name.rsplit(".", 1)[1], value)

    t.fake(Pytest(), t.FakePool())
    gen = t.ScriptedGenerator([t.fenced("GOOD", c) for c in range(2, 9)])

    def die(event):
        if event.stage == "cycle" and event.cycle == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9: the WAL is never checkpointed

    run(t.config(), Path(sys.argv[1]), generator=gen, on_event=die)
    """
)


def _env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def _killed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("killed") / "run"
    tests = str(Path(__file__).parent)
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(out), tests], env=_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert completed_cycles(out) == 1 and (out / "candidates.sqlite-wal").stat().st_size > 0
    return out


@pytest.fixture
def killed_after_cycle_1(_killed: Path, tmp_path: Path) -> Path:
    """A copy of a run killed (-9) right after cycle 1 of 2: its rows are still in the WAL."""
    out = tmp_path / "run"
    subprocess.run(["cp", "-a", str(_killed), str(out)], check=True)
    return out


def _half(path: Path) -> None:
    """Truncate to half, after moving the WAL's pages into the file (else they survive there)."""
    import sqlite3

    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw.close()
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize(
    "damage",
    [
        lambda out: os.truncate(out / "candidates.sqlite", 0),
        lambda out: _half(out / "candidates.sqlite"),
        lambda out: os.truncate(out / "candidates.sqlite-wal", 100),
        lambda out: (out / "candidates.sqlite-wal").unlink(),
        lambda out: (out / "candidates.sqlite").unlink(),
    ],
    ids=["db-empty", "db-half", "wal-100-bytes", "wal-gone", "db-gone"],
)
def test_a_damaged_store_is_never_resumed(killed_after_cycle_1: Path, monkeypatch, damage) -> None:
    out = killed_after_cycle_1
    damage(out)
    fake(monkeypatch, FakePool())
    with pytest.raises(CandidateStoreError, match="candidates.sqlite") as err:
        run(config(), out, generator=ScriptedGenerator([fenced("GOOD", 3)]), resume=True)
    text = str(err.value)
    assert "\n" not in text and ("recover" in text or "restore" in text), text
    assert completed_cycles(out) == 1  # nothing moved on


def test_an_intact_killed_run_resumes_and_the_cli_refuses_a_damaged_one(
    killed_after_cycle_1: Path, monkeypatch, tmp_path: Path
) -> None:
    out = killed_after_cycle_1
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(out), str(copy)], check=True)
    fake(monkeypatch, FakePool())
    frame = run(config(), out, generator=ScriptedGenerator([fenced("GOOD", 3)]), resume=True)
    assert list(frame.cycle) == [1, 2] and len(cands(out)) == 10
    os.truncate(copy / "candidates.sqlite-wal", 100)
    result = subprocess.run(
        [sys.executable, "-m", "archrefine", "loop", "--resume", str(copy)],
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "candidates.sqlite" in result.stderr and "Traceback" not in result.stderr


def test_a_full_disk_ends_the_run_in_one_line_keeping_what_was_written(
    tmp_path: Path, monkeypatch
) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True
        ).returncode
    ):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        fake(monkeypatch, FakePool())
        padding = "# " + "x" * 60_000 + "\n"
        gen = ScriptedGenerator([fenced("GOOD", 3) + padding])
        with pytest.raises((CandidateStoreError, StoreError)) as err:
            run(config(**{"loop.cycles": 50}), mnt / "run", generator=gen)
        assert "\n" not in str(err.value) and "kept" in str(err.value)
        done = completed_cycles(mnt / "run")
        rows = cands(mnt / "run")
        assert (rows[rows.cycle <= done].groupby("cycle").size() == 5).all()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# ---- a run directory is not trusted blindly (finding 10) ------------------------------------


@pytest.fixture
def stopped(tmp_path: Path, monkeypatch) -> Path:
    """A run stopped after cycle 1 of 2 (the generator went away)."""
    out = tmp_path / "run"
    fake(monkeypatch, FakePool())
    with pytest.raises(GeneratorUnavailable):
        run(config(), out, generator=ScriptedGenerator([fenced("GOOD", 3)], fail_after=1))
    assert completed_cycles(out) == 1
    return out


def test_a_tampered_config_is_refused_and_vouching_reads_only_the_runs_template(
    stopped: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET $references")
    text = (stopped / "config.toml").read_text()
    text = text.replace('template = ""', f'template = "{secret}"')
    text = text.replace('base_url = ""', 'base_url = "http://evil.example/v1"')
    (stopped / "config.toml").write_text(text)
    gen = ScriptedGenerator([fenced("GOOD", 3)])
    tampered = load_config(stopped / "config.toml", model=RealConfig)
    with pytest.raises(StoreError, match="was changed after archrefine wrote it") as err:
        run(tampered, stopped, generator=gen, resume=True)
    assert "\n" not in str(err.value) and not gen.calls
    run(tampered, stopped, generator=gen, resume=True, trust_config=True)  # the user vouches
    assert gen.calls and not any("TOP SECRET" in p for c in gen.calls for p in c)
    info = json.loads((stopped / "run.json").read_text())
    assert info["isolation"] and info["config_hmac"] and info["resumed_isolation"]
    from archrefine.sandbox.confine import seccomp_problem

    assert info["syscall_filter"] == (seccomp_problem() or "seccomp")  # the jobs' seccomp filter


def test_a_run_signed_with_another_key_or_run_json_edited_is_refused(
    stopped: Path, tmp_path: Path, monkeypatch
) -> None:
    cfg = load_config(stopped / "config.toml", model=RealConfig)
    info = json.loads((stopped / "run.json").read_text())
    (stopped / "run.json").write_text(json.dumps({**info, "isolation": "rlimits"}))
    with pytest.raises(StoreError, match="was changed after"):
        run(cfg, stopped, generator=ScriptedGenerator(["x"]), resume=True)
    (stopped / "run.json").write_text(json.dumps(info))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "another-user"))
    with pytest.raises(StoreError, match="another user"):
        run(cfg, stopped, generator=ScriptedGenerator(["x"]), resume=True)


def test_resume_never_silently_weakens_isolation(stopped: Path) -> None:
    info = json.loads((stopped / "run.json").read_text())
    if not info["isolation"].startswith("bwrap"):
        pytest.skip("bwrap does not work here: the run already has the weakest isolation")
    text = (
        (stopped / "config.toml").read_text().replace('isolation = "auto"', 'isolation = "rlimits"')
    )
    (stopped / "config.toml").write_text(text)
    cfg = load_config(stopped / "config.toml", model=RealConfig)
    gen = ScriptedGenerator([fenced("GOOD", 3)])
    with pytest.raises(StoreError, match="would resume with 'rlimits"):
        run(cfg, stopped, generator=gen, resume=True, trust_config=True)
    run(cfg, stopped, generator=gen, resume=True, trust_config=True, weaker_isolation=True)
    assert json.loads((stopped / "run.json").read_text())["resumed_isolation"][-1].startswith(
        "rlimits"
    )


# ---- a misbehaving server ends the run in one line (finding 11) -----------------------------


def test_a_server_answering_html_ends_the_cli_run_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("openai")
    from test_openai import Stub

    with Stub(b"<html>502 Bad Gateway</html>", "text/html") as stub:
        result = subprocess.run(
            [sys.executable, "-m", "archrefine", "loop", "--out", str(tmp_path / "run"),
             "--set", "generator.kind=openai", "--set", f"generator.base_url={stub.url}",
             "--set", "generator.max_retries=1", "--set", "evaluate.workers=1"],
            capture_output=True, text=True, env=_env(), timeout=300,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "unusable answer 2 time(s)" in result.stderr and "Traceback" not in result.stderr
    assert stub.posts >= 2
