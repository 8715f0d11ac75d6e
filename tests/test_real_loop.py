"""The real loop end to end: real sandbox, real SQLite store, real (small) generators.

`ScriptedGenerator` stands in for an LLM where a test needs to control what is written (hostile
code, a failure mid-cycle); the learned generator runs the loop for real. The hf and openai
backends run it in tests/test_hf.py and tests/test_openai.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("datasketch")

from archrefine.core.config import ConfigError  # noqa: E402
from archrefine.real import RealConfig, completed_cycles, run  # noqa: E402
from archrefine.real.candidates import CandidateStore  # noqa: E402
from archrefine.real.prompts import Reference, load_template, render  # noqa: E402
from archrefine.real.text import GeneratorUnavailable, Sampling  # noqa: E402
from archrefine.sim.loop import METRICS  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

SMALL = {
    "loop.cycles": 2,
    "loop.population": 6,
    "loop.top_k": 2,
    "evaluate.max_train": 100,
    "evaluate.timeout_s": 20,
    "evaluate.memory_mb": 1024,
}
NET = """import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, {c}, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                               nn.Flatten(), nn.Linear({c}, {out}))

    def forward(self, x):
        return self.f(x)
"""
ESCAPE = "/tmp/archrefine_loop_escape_test"
OS = "o = getattr(torch.serialization, 'o' + 's')\n"  # evades static_check: the sandbox decides
SOCK = (
    "import torch.distributed.elastic.agent.server.api as api\n"
    "getattr(api, 'soc' + 'ket').create_connection(('127.0.0.1', 22), timeout=1)\n"
)
HOSTILE = {
    "infinite loop": "import torch\nwhile True:\n    pass\n",
    "fork bomb": "import torch\n" + OS + "while True:\n    try:\n        o.fork()\n"
    "    except OSError:\n        pass\n",
    "50 GB": "import torch\nx = torch.empty(50 * 2**30 // 4)\n",
    "socket": "import torch\n" + SOCK,
    "write outside": "import torch\n" + OS + f"o.open('{ESCAPE}', o.O_CREAT | o.O_WRONLY)\n",
    "kill parent": "import torch\n" + OS + "o.kill(o.getppid(), 9)\n",
    "1 GB stdout": "import torch\nfor _ in range(1024):\n    print('x' * (1 << 20))\n",
}


@pytest.fixture(autouse=True)
def _own_key(tmp_path: Path, monkeypatch) -> None:
    """Runs are signed with a key of the test's own (real/trust.py), not the user's."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def fenced(code: str) -> str:
    return f"Here is a network.\n```python\n{code}```\n"


class ScriptedGenerator:
    """A TextGenerator that answers from a script (cycling), recording what it was asked."""

    def __init__(self, answers: list[str], fail_after: int | None = None) -> None:
        self.answers, self.fail_after = answers, fail_after
        self.calls: list[list[str]] = []
        self.refined: list[int] = []

    def generate(self, prompts, sampling: Sampling, seed: int) -> list[str]:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise GeneratorUnavailable("cannot reach the OpenAI-compatible server (scripted)")
        self.calls.append(list(prompts))
        k = sum(len(c) for c in self.calls[:-1])
        return [self.answers[(k + i) % len(self.answers)] for i in range(len(prompts))]

    def refine(self, pairs, cycle: int) -> float | None:
        self.refined.append(len(pairs))
        return None

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "scripted.txt").write_text(str(len(self.calls)))

    def load(self, directory: Path) -> None:
        assert (directory / "scripted.txt").exists()

    def close(self) -> None:
        pass


def config(**extra) -> RealConfig:
    return RealConfig().with_overrides({**SMALL, **extra})


def test_learned_generator_runs_two_cycles_with_the_simulators_columns(tmp_path: Path) -> None:
    out = tmp_path / "run"
    frame = run(config(), out)
    assert list(frame.cycle) == [1, 2]
    assert set(METRICS) <= set(frame.columns)
    assert {"best_fitness", "mutation_rate", "pool_size", "loss"} <= set(frame.columns)
    assert frame.validity.between(0, 1).all() and frame.novelty.between(0, 1).all()
    for name in ("metrics.parquet", "trajectory.png", "claims.md", "phases.json", "run.json"):
        assert (out / name).exists(), name
    assert (out / "generator" / "cycle-001" / "learned.npz").exists()
    assert (out / "generator" / "cycle-002" / "learned.npz").exists()
    with CandidateStore(out / "candidates.sqlite") as store:
        cands = store.to_frame()
    assert len(cands) == 12 and set(cands.cycle) == {1, 2}
    ok = cands[cands.status == "ok"]
    trained = ok[~ok.near_duplicate]  # near duplicates are built and run, not trained
    assert len(trained) > 0 and trained.accuracy.notna().all() and ok.params.gt(0).all()
    assert ok[ok.near_duplicate].accuracy.isna().all()
    chosen = cands[cands.selected]
    assert 0 < len(chosen) <= 4 and (chosen.status == "ok").all()
    # cycle 2's prompts show cycle 1's selection as references, with scores
    second = cands[cands.cycle == 2]
    assert second.parent_ids.map(len).gt(0).all()
    assert "accuracy" in second.prompt.iloc[0]
    assert pd.read_parquet(out / "metrics.parquet").shape[0] == 2


def test_hostile_candidates_are_contained_and_the_loop_carries_on(tmp_path: Path) -> None:
    good = fenced(NET.format(c=4, out=10))
    wrong = fenced(NET.format(c=4, out=7))
    bad = [fenced(code + NET.format(c=3, out=10)) for code in HOSTILE.values()]
    answers = [good, wrong, *bad, "I cannot write code today."]
    gen = ScriptedGenerator(answers)
    cfg = config(**{"loop.population": len(answers), "loop.cycles": 1, "loop.top_k": 1,
                    "evaluate.timeout_s": 5, "generator.retries": 0})  # fmt: skip
    run(cfg, tmp_path / "run", generator=gen)
    with CandidateStore(tmp_path / "run" / "candidates.sqlite") as store:
        rows = store.to_frame().set_index("response")
    assert rows.loc[good, "status"] == "ok" and rows.loc[good, "selected"]
    assert rows.loc[wrong, "status"] == "invalid" and "shape" in rows.loc[wrong, "reason"]
    for name, response in zip(HOSTILE, bad):
        status = rows.loc[response, "status"]
        assert status in {"timeout", "oom", "forbidden", "crashed", "invalid"}, (name, status)
        assert "\n" not in rows.loc[response, "reason"]
    assert rows.loc[answers[-1], "status"] == "no_code"
    assert not Path(ESCAPE).exists()
    os.kill(os.getpid(), 0)  # the caller survived "kill parent"


def test_a_generator_failure_mid_cycle_is_resumable_without_losing_or_redoing(
    tmp_path: Path,
) -> None:
    answers = [fenced(NET.format(c=c, out=10)) for c in range(2, 14)]
    cfg = config(**{"loop.population": 10})  # two generate calls per cycle (batches of 8)
    out = tmp_path / "run"
    with pytest.raises(GeneratorUnavailable):
        run(cfg, out, generator=ScriptedGenerator(answers, fail_after=3))
    assert completed_cycles(out) == 1
    with CandidateStore(out / "candidates.sqlite") as store:
        before = store.to_frame()
    assert len(before[before.cycle == 2]) == 8  # the first batch of cycle 2 was kept
    gen = ScriptedGenerator(answers)
    run(cfg, out, generator=gen, resume=True)
    assert [len(c) for c in gen.calls] == [2]  # only the missing slots were asked for
    with CandidateStore(out / "candidates.sqlite") as store:
        after = store.to_frame()
    assert len(after) == 20 and (after.groupby("cycle").size() == 10).all()
    kept = after.set_index("id").loc[before.id].reset_index()
    assert list(kept.response) == list(before.response)  # nothing regenerated
    done = before.status != "pending"  # evaluated before the failure: kept as they were
    cols = ["status", "accuracy", "novelty", "seconds"]
    pd.testing.assert_frame_equal(kept.loc[done, cols], before.loc[done, cols])
    assert (kept.loc[~done, "status"] == "ok").all()  # the rest were evaluated after resuming
    assert list(pd.read_parquet(out / "metrics.parquet").cycle) == [1, 2]


def test_killed_loop_resumes_from_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [f"--set={k}={v}" for k, v in {**SMALL, "loop.cycles": 3}.items()]
    cmd = [sys.executable, "-m", "archrefine", "loop", *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "state.json").exists() and completed_cycles(out) >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the loop ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9, mid cycle 2
    proc.wait()
    done = completed_cycles(out)
    assert done >= 1
    with CandidateStore(out / "candidates.sqlite") as store:
        before = store.to_frame()
    result = subprocess.run(
        [sys.executable, "-m", "archrefine", "loop", "--resume", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with CandidateStore(out / "candidates.sqlite") as store:
        after = store.to_frame()
    assert (after.groupby("cycle").size() == 6).all() and set(after.cycle) == {1, 2, 3}
    finished = before[before.status != "pending"]
    kept = after.set_index("id").loc[finished.id]
    assert list(kept.status) == list(finished.status)
    assert list(pd.read_parquet(out / "metrics.parquet").cycle) == [1, 2, 3]


def test_prompt_templates_render_and_fail_clearly(tmp_path: Path) -> None:
    cfg = RealConfig()
    text = render(
        load_template(""), cfg.prompt, [Reference("class Net: ...", 0.91, 1234)],
        input_shape=(3, 32, 32), classes=10,
    )  # fmt: skip
    assert "accuracy 0.910" in text and "1,234 parameters" in text and "(batch, 3, 32, 32)" in text
    custom = tmp_path / "t.txt"
    custom.write_text("Design for $dataset.\n$references\n")
    assert render(load_template(str(custom)), cfg.prompt, [], input_shape=(1,), classes=2)
    custom.write_text("Design for $datset.\n")
    with pytest.raises(ConfigError, match=r"unknown placeholder \$datset"):
        load_template(str(custom))
    with pytest.raises(ConfigError, match="cannot read"):
        load_template(str(tmp_path / "missing.txt"))


def test_config_errors_are_one_line() -> None:
    with pytest.raises(ConfigError, match="generator.model"):
        RealConfig().with_overrides({"generator.kind": "hf"})
    with pytest.raises(ConfigError, match="top_k"):
        RealConfig().with_overrides({"loop.top_k": 50})
    with pytest.raises(ConfigError, match="generator.kind"):
        RealConfig().with_overrides({"generator.kind": "gpt5"})


def test_hf_generator_runs_two_cycles_with_a_lora_step_saved_and_reloaded(tmp_path: Path) -> None:
    """A tiny random GPT-2 writes gibberish, so each batch's first response is replaced by a
    valid network (as if the model had written it): then selection, the LoRA step inside the
    loop, the per-cycle adapter and its reload on resume all run for real."""
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from peft import get_peft_model_state_dict

    from archrefine.real.hf import HFGenerator, LoraSettings, build_tiny_model

    class Planted(HFGenerator):
        def generate(self, prompts, sampling, seed):
            out = super().generate(prompts, sampling, seed)
            return [fenced(NET.format(c=2 + seed % 50, out=10)), *out[1:]] if out else out

    model = build_tiny_model(tmp_path / "tiny", seed=0)
    lora = LoraSettings(lr=1e-2, batch_size=2)
    cfg = config(**{"generator.kind": "hf", "generator.model": str(model),
                    "generator.max_new_tokens": 24, "generator.retries": 0,
                    "loop.population": 3, "loop.top_k": 1})  # fmt: skip
    out = tmp_path / "run"
    with pytest.raises(GeneratorUnavailable):  # stop after cycle 1 (a lost server, say)

        class StopsInCycle2(Planted):
            def generate(self, prompts, sampling, seed):
                if self.cycles_refined >= 1:
                    raise GeneratorUnavailable("stopped for the test")
                return super().generate(prompts, sampling, seed)

            def refine(self, pairs, cycle):
                loss = super().refine(pairs, cycle)
                self.cycles_refined = cycle
                state = get_peft_model_state_dict(self.model)
                self.snapshot = {k: v.detach().clone() for k, v in state.items()}
                return loss

        first = StopsInCycle2(model, lora=lora, device="cpu")
        first.cycles_refined = 0
        run(cfg, out, generator=first)
    adapter = out / "generator" / "cycle-001" / "adapter"
    assert adapter.is_dir() and completed_cycles(out) == 1
    trained = first.snapshot
    second = Planted(model, lora=lora, device="cpu")
    frame = run(cfg, out, generator=second, resume=True)
    assert list(frame.cycle) == [1, 2] and frame.loss.notna().all()
    assert (out / "generator" / "cycle-002" / "adapter").is_dir()
    # the resumed generator started from cycle 1's adapter, then trained it further
    reloaded = HFGenerator(model, lora=lora, device="cpu")
    reloaded.load(out / "generator" / "cycle-001")
    for key, value in get_peft_model_state_dict(reloaded.model).items():
        assert torch_equal(value, trained[key]), key
    with CandidateStore(out / "candidates.sqlite") as store:
        cands = store.to_frame()
    assert len(cands) == 6 and cands.selected.sum() == 2


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_openai_backend_runs_two_cycles_and_survives_the_server_going_down(
    tmp_path: Path,
) -> None:
    pytest.importorskip("openai")
    from archrefine.real.serve import GeneratorServer
    from archrefine.real.text import LearnedTextGenerator

    served = LearnedTextGenerator(seed=0)
    server = GeneratorServer(served, model_name="learned").start()
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    cfg = config(**{"generator.kind": "openai", "generator.base_url": server.url,
                    "generator.max_retries": 0, "generator.timeout_s": 30,
                    "loop.cycles": 3})  # fmt: skip
    out = tmp_path / "run"

    def down_after_cycle_1(event) -> None:
        if event.stage == "cycle" and event.cycle == 1:
            server.stop()

    with pytest.raises(GeneratorUnavailable, match="cannot reach"):
        run(cfg, out, on_event=down_after_cycle_1)
    assert completed_cycles(out) == 1
    with GeneratorServer(served, model_name="learned", port=port):  # back up on the same URL
        frame = run(cfg, out, resume=True)
    assert list(frame.cycle) == [1, 2, 3]
    with CandidateStore(out / "candidates.sqlite") as store:
        cands = store.to_frame()
    assert (cands.groupby("cycle").size() == 6).all()
    assert cands.response.str.contains("class Net|A network with layers").all()


def test_cli_reports_an_unreachable_server_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("openai")
    result = subprocess.run(
        [sys.executable, "-m", "archrefine", "loop", "--set", "generator.kind=openai",
         "--set", "generator.base_url=http://127.0.0.1:9/v1", "--set", "generator.max_retries=0",
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach"), result.stderr
    assert "127.0.0.1:9" in lines[0]


def test_export_writes_parquet_and_fine_tuning_pairs(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from archrefine.cli.commands import app

    answers = [fenced(NET.format(c=c, out=10)) for c in (3, 5)] + ["no code here"]
    cfg = config(**{"loop.cycles": 1, "loop.population": 3, "loop.top_k": 1,
                    "generator.retries": 0})  # fmt: skip
    out = tmp_path / "run"
    run(cfg, out, generator=ScriptedGenerator(answers))
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(out), "--format", "parquet"])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out / "candidates.parquet")
    assert len(table) == 3 and set(table.status) >= {"ok", "no_code"}
    result = runner.invoke(app, ["export", str(out), "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    pairs = pd.read_json(out / "selected.jsonl", lines=True)
    assert list(pairs.columns) == ["prompt", "completion"] and len(pairs) == 1
    assert "class Net" in pairs.completion[0] and "Output contract" in pairs.prompt[0]
    bad = runner.invoke(app, ["export", str(out), "--format", "csv"])
    assert bad.exit_code == 2 and "parquet, jsonl" in bad.output
    missing = runner.invoke(app, ["export", str(tmp_path)])
    assert missing.exit_code == 2 and "no candidates.sqlite" in missing.output
    nothing = runner.invoke(app, ["loop", "--resume", str(tmp_path / "nowhere")])
    assert nothing.exit_code == 2 and "no such loop directory" in nothing.output
