"""Exact resume: a loop killed (kill -9, or Ctrl-C) at seeded random moments and resumed, perhaps
killed again, ends with the same candidates (code, status, accuracy, selection, ...) and
metrics as a run that was never stopped, for the learned, openai and hf generators."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("datasketch")

from archrefine.real.candidates import CandidateStore  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

SRC = str(Path(__file__).resolve().parents[1] / "src")
SMALL = {
    "loop.cycles": 3,
    "loop.population": 6,
    "loop.top_k": 2,
    "evaluate.max_train": 100,
    "evaluate.timeout_s": 20,
    "evaluate.memory_mb": 1024,
}
COMPARED = ["id", "cycle", "prompt", "response", "code", "status", "reason", "params",
            "accuracy", "novelty", "near_duplicate", "fingerprint", "parent_ids",
            "selected"]  # fmt: skip


@pytest.fixture(autouse=True)
def _own_key(tmp_path: Path, monkeypatch) -> None:
    """The run-signing key lives in the test's own config directory (inherited by children)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def _env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _cli(out: Path, settings: dict, resume: bool) -> list[str]:
    if resume:
        return [sys.executable, "-m", "archrefine", "loop", "--resume", str(out)]
    args = [f"--set={k}={v}" for k, v in settings.items()]
    return [sys.executable, "-m", "archrefine", "loop", *args, "--out", str(out)]


def _run(cmd: list[str], out: Path, kill_after: float | None, sig=signal.SIGKILL) -> float:
    """Run `cmd`; `kill_after` seconds after candidates.sqlite appears, send `sig` to its
    process group (unless it finished first). Returns seconds from that moment to its end."""
    proc = subprocess.Popen(cmd, start_new_session=True, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 300
    while not (out / "candidates.sqlite").exists() and proc.poll() is None:
        assert time.time() < deadline, "the loop never started"
        time.sleep(0.05)
    began = time.time()
    while proc.poll() is None and (kill_after is None or time.time() - began < kill_after):
        assert time.time() < deadline, "the loop did not finish"
        time.sleep(0.02)
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    err = proc.communicate(timeout=120)[1]
    if kill_after is None:
        assert proc.returncode == 0, err
    else:  # killed, interrupted (130) or finished: never a traceback
        assert proc.returncode in (0, 130, -signal.SIGKILL), err
        assert "Traceback" not in err, err
    return time.time() - began


def _snapshot(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    with CandidateStore(out / "candidates.sqlite") as store:
        cands = store.to_frame()[COMPARED]
    metrics = pd.read_parquet(out / "metrics.parquet").drop(columns=["seconds"])
    return cands, metrics


def _same(a: Path, b: Path) -> None:
    (ca, ma), (cb, mb) = _snapshot(a), _snapshot(b)
    pd.testing.assert_frame_equal(ca, cb)
    pd.testing.assert_frame_equal(ma, mb)


def _kill_and_resume(cmd_new, cmd_resume, out: Path, stops: list[tuple[float, int]]) -> None:
    """Run `cmd_new`, stopped by the first (seconds, signal) of `stops`, then resume it, stopped
    again by each of the others, and resume it to the end."""
    _run(cmd_new, out, *stops[0])
    for moment, sig in stops[1:]:  # stopped again while resuming
        if (out / "state.json").exists() or (out / "candidates.sqlite").exists():
            _run(cmd_resume, out, moment, sig)
    _run(cmd_resume, out, None)


def test_learned_loop_killed_at_random_moments_resumes_exactly(tmp_path: Path) -> None:
    base = tmp_path / "uninterrupted"
    total = _run(_cli(base, SMALL, False), base, None)
    rng = random.Random(11)
    plans = [[(rng.uniform(0, total), signal.SIGKILL)]]
    # killed, then interrupted (Ctrl-C) while resuming: one run for both signals (CI's time)
    half = total / 2
    plans += [[(rng.uniform(0, half), signal.SIGKILL), (rng.uniform(0, half), signal.SIGINT)]]
    for i, stops in enumerate(plans):
        out = tmp_path / f"killed-{i}"
        _kill_and_resume(_cli(out, SMALL, False), _cli(out, SMALL, True), out, stops)
        _same(base, out)
        for name in ("learned.npz",):  # the generator ends in the same state too
            with (
                np.load(base / "generator" / "cycle-003" / name) as x,
                np.load(out / "generator" / "cycle-003" / name) as y,
            ):
                assert set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x), i


def test_learned_loop_stopped_between_generation_and_refinement_resumes_exactly(
    tmp_path: Path,
) -> None:
    """The window finding 8 was in: a cycle's candidates all stored and evaluated, the process
    gone before refining; the resumed run must refine (and sample) as if it never stopped."""
    from archrefine.real import RealConfig, run
    from archrefine.real.text import LearnedTextGenerator

    class Stop(BaseException):  # like a kill: nothing in the loop may catch it
        pass

    class StopsBeforeRefining(LearnedTextGenerator):
        def refine(self, pairs, cycle):
            raise Stop  # at the first refinement

    cfg = RealConfig().with_overrides(SMALL)
    run(cfg, tmp_path / "uninterrupted")
    out = tmp_path / "stopped"
    with pytest.raises(Stop):
        run(cfg, out, generator=StopsBeforeRefining(cfg.generator.learned, seed=cfg.seed))
    run(cfg, out, resume=True)
    _same(tmp_path / "uninterrupted", out)


def test_openai_loop_killed_mid_run_resumes_exactly(tmp_path: Path) -> None:
    pytest.importorskip("openai")
    from archrefine.real.serve import GeneratorServer
    from archrefine.real.text import LearnedTextGenerator

    with GeneratorServer(LearnedTextGenerator(seed=3), model_name="learned") as server:
        settings = {**SMALL, "loop.cycles": 2, "generator.kind": "openai",
                    "generator.base_url": server.url, "generator.max_retries": 0}  # fmt: skip
        base = tmp_path / "uninterrupted"
        total = _run(_cli(base, settings, False), base, None)
        out = tmp_path / "killed"
        stops = [(random.Random(5).uniform(total / 4, total), signal.SIGKILL)]
        _kill_and_resume(_cli(out, settings, False), _cli(out, settings, True), out, stops)
    _same(base, out)


HF_DRIVER = textwrap.dedent(
    """
    import os
    import sys
    from pathlib import Path
    from archrefine.real.hf import HFGenerator, LoraSettings
    from archrefine.real import RealConfig, run

    NET = '''```python
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Sequential(nn.Conv2d(3, {c}, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                   nn.Flatten(), nn.Linear({c}, 10))

        def forward(self, x):
            return self.f(x)
    ```
    '''


    class Planted(HFGenerator):  # the tiny model writes gibberish: plant one network a batch
        def generate(self, prompts, sampling, seed):
            out = super().generate(prompts, sampling, seed)
            return [NET.format(c=2 + seed % 50), *out[1:]] if out else out

        def refine(self, pairs, cycle):
            if sys.argv[3] == "stop":  # gone between a cycle's evaluation and its refinement
                os._exit(9)
            return super().refine(pairs, cycle)


    model, out, resume = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "resume"
    cfg = RealConfig().with_overrides({
        "loop.cycles": 3, "loop.population": 3, "loop.top_k": 1, "evaluate.max_train": 100,
        "evaluate.timeout_s": 20, "evaluate.memory_mb": 1024, "generator.kind": "hf",
        "generator.model": model, "generator.max_new_tokens": 24, "generator.retries": 0})
    gen = Planted(model, lora=LoraSettings(lr=1e-2, batch_size=2), device="cpu", seed=cfg.seed)
    run(cfg, out, generator=gen, resume=resume)
    """
)


def test_hf_loop_killed_mid_run_resumes_exactly(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from archrefine.real.hf import build_tiny_model

    model = str(build_tiny_model(tmp_path / "tiny", seed=0))

    def cmd(out: Path, resume: bool) -> list[str]:
        return [sys.executable, "-c", HF_DRIVER, model, str(out), "resume" if resume else "new"]

    base = tmp_path / "uninterrupted"
    total = _run(cmd(base, False), base, None)
    out = tmp_path / "killed"
    moment = random.Random(7).uniform(total / 3, total)
    _kill_and_resume(cmd(out, False), cmd(out, True), out, [(moment, signal.SIGKILL)])
    _same(base, out)
    assert _snapshot(out)[1].loss.notna().any()  # the LoRA step really ran
    # The window a random kill rarely hits: cycle 1 stored, the process gone before the first
    # refinement; the fresh process that resumes has sampled nothing (its RNG is untouched).
    out = tmp_path / "stopped"
    stop = subprocess.run(cmd(out, False)[:-1] + ["stop"], env=_env(), capture_output=True)
    assert stop.returncode == 9, stop.stderr
    _run(cmd(out, True), out, None)
    _same(base, out)
