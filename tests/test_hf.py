"""The `hf` generator, really, on a tiny local GPT-2 built here (no download, CPU, seconds)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch

torch = pytest.importorskip("torch", reason="the hf generator needs torch")
pytest.importorskip("transformers", reason="the hf generator needs transformers")
pytest.importorskip("peft", reason="the hf generator needs peft")
pytest.importorskip("tokenizers", reason="the hf generator needs tokenizers")

from peft import get_peft_model_state_dict  # noqa: E402

from archrefine.real.config import PromptConfig  # noqa: E402
from archrefine.real.hf import HFGenerator, LoraSettings, build_tiny_model  # noqa: E402
from archrefine.real.prompts import (  # noqa: E402
    Reference,
    load_template,
    prompt_check,
    render,
    render_fitted,
)
from archrefine.real.text import (  # noqa: E402
    GeneratorUnavailable,
    LearnedTextGenerator,
    Sampling,
    TextGenerator,
)
from archrefine.real.tiny import answer, completion_loss, examples  # noqa: E402
from archrefine.space import KNOWN, to_source  # noqa: E402

SAMPLING = Sampling(temperature=1.0, max_new_tokens=12)
PROMPTS = ["Write a PyTorch module `Net`.", "Propose a new architecture.", "hi"]
PAIRS = [
    ("Write a network:", "```python\nimport torch\nfrom torch import nn\n```\n"),
    ("Another one:", "class Net(nn.Module):\n    def forward(self, x):\n        return x\n"),
    ("A third:", "self.fc1 = nn.Linear(400, 128)\n"),
] * 2
FAST = LoraSettings(lr=1e-2, batch_size=2)
SMALL = dict(n_layer=1, n_embd=32, n_head=2, n_positions=512, vocab_size=1024)  # seconds to train
SHAPE = dict(input_shape=(3, 32, 32), classes=10)
TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


def _adapter(gen: HFGenerator) -> dict:
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(gen.model).items()}


def test_build_is_deterministic(tiny, tmp_path):
    again = build_tiny_model(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tiny / name).read_bytes() == (again / name).read_bytes()


def test_generate_one_per_prompt_and_seeded(tiny):
    gen = HFGenerator(tiny, lora=FAST, device="cpu")
    assert isinstance(gen, TextGenerator)
    out = gen.generate(PROMPTS * 3, SAMPLING, seed=1)  # 9 prompts: two chunks
    assert len(out) == 9 and all(isinstance(s, str) for s in out)
    assert gen.generate(PROMPTS * 3, SAMPLING, seed=1) == out
    assert gen.generate(PROMPTS * 3, SAMPLING, seed=2) != out
    assert gen.generate([], SAMPLING, seed=1) == []


def test_without_chat_template_the_prompt_is_raw(tiny):
    gen = HFGenerator(tiny, device="cpu")
    assert not gen.tokenizer.chat_template
    assert gen.tokenizer.decode(gen._prompt_ids("hi there")) == "hi there"


def test_chat_template_wraps_one_user_turn(tiny, tmp_path):
    chat = tmp_path / "chat"
    shutil.copytree(tiny, chat)
    plain = HFGenerator(tiny, device="cpu")
    plain.tokenizer.chat_template = TEMPLATE
    plain.tokenizer.save_pretrained(chat)  # saved and reloaded the way a real chat model is
    gen = HFGenerator(chat, lora=FAST, device="cpu")
    assert gen.tokenizer.chat_template == TEMPLATE
    assert gen.tokenizer.decode(gen._prompt_ids("hi")) == "<|user|>hi<|assistant|>"
    ids, labels = gen._example("hi", "ok")
    assert gen.tokenizer.decode(ids) == "<|user|>hi<|assistant|>ok<|endoftext|>"
    assert len(gen.generate(PROMPTS, SAMPLING, seed=0)) == 3
    assert math.isfinite(gen.refine(PAIRS, 1))


def test_labels_cover_only_the_completion(tiny):
    gen = HFGenerator(tiny, lora=LoraSettings(max_length=16), device="cpu")
    ids, labels = gen._example("a prompt", "the completion")
    n = len(gen._prompt_ids("a prompt"))
    assert labels[:n] == [-100] * n and labels[n:] == ids[n:]
    assert ids[-1] == gen.tokenizer.eos_token_id
    ids, labels = gen._example("word " * 50, "x")  # too long: the prompt loses its start
    assert len(ids) == 16 and labels[-2:] == ids[-2:] and labels[:-2] == [-100] * 14


def test_long_prompts_are_cut_from_the_left(tmp_path):
    short = build_tiny_model(tmp_path / "short", corpus=["def f(x):\n    return x\n"] * 4,
                             vocab_size=300, n_positions=32)  # fmt: skip
    gen = HFGenerator(short, device="cpu")
    out = gen.generate(["word " * 100, "x"], Sampling(max_new_tokens=8), seed=0)
    assert len(out) == 2


def test_refine_loss_decreases_and_only_lora_changes(tiny):
    gen = HFGenerator(tiny, lora=FAST, device="cpu")
    base = {k: v.detach().clone() for k, v in gen.model.named_parameters()}
    assert gen.refine([], 1) is None
    losses = [gen.refine(PAIRS, c) for c in range(1, 5)]
    assert all(isinstance(x, float) and math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
    lora = changed = 0
    for name, p in gen.model.named_parameters():
        if "lora_" in name:
            lora += 1
            assert p.requires_grad
            changed += "lora_B" in name and bool(p.detach().abs().sum() > 0)  # B starts at 0
            continue
        assert not p.requires_grad
        key = name.removeprefix("base_model.model.").replace(".base_layer", "")
        assert torch.equal(p.detach(), base[key]), name
    assert lora and changed
    assert not gen.model.training


def test_default_targets_and_fallback(tiny):
    gen = HFGenerator(tiny, device="cpu")
    assert gen._targets() == (["c_attn"], True)  # peft's default for gpt2: Conv1D
    gen.model.config.model_type = "no-such-model"
    assert gen._targets() == (["c_attn", "c_fc", "c_proj"], True)
    gen = HFGenerator(tiny, lora=LoraSettings(target_modules=("c_fc",)), device="cpu")
    assert gen._targets() == (["c_fc"], True)


def test_save_load_continues_exactly(tiny, tmp_path):
    a = HFGenerator(tiny, lora=FAST, device="cpu", seed=3)
    a.refine(PAIRS, 1)
    a.refine(PAIRS, 2)
    a.save(tmp_path / "cycle-002")
    at_two = a.generate(PROMPTS, SAMPLING, seed=5)
    b = HFGenerator(tiny, lora=FAST, device="cpu", seed=3)
    b.load(tmp_path / "cycle-002")
    assert b.cycles == 2 and b.last_cycle == 2
    for key, value in _adapter(a).items():
        assert torch.equal(value, _adapter(b)[key]), key
    assert b.generate(PROMPTS, SAMPLING, seed=5) == at_two
    assert b.refine(PAIRS, 3) == a.refine(PAIRS, 3)  # same AdamW state, same shuffle/dropout
    for key, value in _adapter(a).items():
        assert torch.equal(value, _adapter(b)[key]), key
    assert a.generate(PROMPTS, SAMPLING, seed=5) != at_two
    b.load(tmp_path / "cycle-002")  # loading over an adapter replaces it
    assert b.generate(PROMPTS, SAMPLING, seed=5) == at_two
    a.close()
    assert a.model is None


def test_save_before_refine_loads_the_base(tiny, tmp_path):
    a = HFGenerator(tiny, device="cpu")
    a.save(tmp_path / "cycle-000")
    assert sorted(p.name for p in (tmp_path / "cycle-000").iterdir()) == ["hf.json"]
    b = HFGenerator(tiny, device="cpu")
    b.load(tmp_path / "cycle-000")
    assert b.optimizer is None
    assert b.generate(PROMPTS, SAMPLING, seed=0) == a.generate(PROMPTS, SAMPLING, seed=0)


def test_missing_or_bad_model_is_unavailable(tmp_path):
    missing = tmp_path / "no-model-here"
    with pytest.raises(GeneratorUnavailable, match="no-model-here"):
        HFGenerator(missing)
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(GeneratorUnavailable, match="not-a-model") as info:
        HFGenerator(empty)
    assert "\n" not in str(info.value)


def _held_out(model: Path, n: int) -> list[tuple[str, str]]:
    """KNOWN-like (prompt, answer) pairs from a stream training never reads (seed 99), KNOWN's
    own sources left out: the variants only."""
    gen = HFGenerator(model, device="cpu")
    known = {answer(seq) for seq in KNOWN.values()}
    stream = examples(99, lambda p: len(gen._prompt_ids(p)), gen._context())
    return [pair for pair, _ in zip((p for p in stream if p[1] not in known), range(n))]


def test_training_lowers_the_loss_on_held_out_known_like_answers(tmp_path):
    untrained = build_tiny_model(tmp_path / "random", seed=0, **SMALL)
    trained = build_tiny_model(
        tmp_path / "trained", seed=0, steps=30, batch_size=4, lr=1e-2, **SMALL
    )
    assert (untrained / "tokenizer.json").read_bytes() == (trained / "tokenizer.json").read_bytes()
    pairs = _held_out(trained, 8)
    before, after = completion_loss(untrained, pairs), completion_loss(trained, pairs)
    assert after < before - 0.75, (before, after)  # nats per answer token; ln(1024) at first
    record = json.loads((trained / "tiny.json").read_text())
    assert record["steps"] == 30 and record["last_loss"] < record["first_loss"]
    assert not (untrained / "tiny.json").exists()


def test_training_is_deterministic_per_seed(tmp_path):
    a = build_tiny_model(tmp_path / "a", seed=1, steps=3, batch_size=2, **SMALL)
    b = build_tiny_model(tmp_path / "b", seed=1, steps=3, batch_size=2, **SMALL)
    c = build_tiny_model(tmp_path / "c", seed=2, steps=3, batch_size=2, **SMALL)
    weights = [(m / "model.safetensors").read_bytes() for m in (a, b, c)]
    assert weights[0] == weights[1] != weights[2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no partial left


def test_prompts_too_long_for_the_context_drop_references_first(tiny):
    gen = HFGenerator(tiny, device="cpu")
    refs = [Reference(to_source(seq), name=name) for name, seq in list(KNOWN.items())[:3]]
    template, cfg = load_template(""), PromptConfig()

    def tokens(references: list[Reference]) -> int:
        return len(gen._prompt_ids(render(template, cfg, references, **SHAPE)))

    context = gen._context()
    room_for_one = context - tokens(refs[:1])  # max_new_tokens that leaves room for one only
    prompt, kept = render_fitted(template, cfg, refs, fits=prompt_check(gen, room_for_one), **SHAPE)
    assert kept == refs[:1] and prompt == render(template, cfg, refs[:1], **SHAPE)
    assert len(gen._prompt_ids(prompt)) <= context - room_for_one < tokens(refs[:2])
    prompt, kept = render_fitted(template, cfg, refs, fits=prompt_check(gen, context - 5), **SHAPE)
    assert kept == [] and "no reference architectures yet" in prompt  # generate cuts its start
    # generators that do not know their context (learned, openai) keep every reference
    assert prompt_check(LearnedTextGenerator(), 10) is None
    assert render_fitted(template, cfg, refs, fits=None, **SHAPE)[1] == refs


def test_tiny_model_command_trains_for_the_steps_asked(tmp_path):
    from typer.testing import CliRunner

    from archrefine.cli import app

    bad = CliRunner().invoke(app, ["tiny-model", str(tmp_path / "bad"), "--steps", "-1"])
    assert bad.exit_code == 2 and not (tmp_path / "bad").exists()
    done = CliRunner().invoke(app, ["tiny-model", str(tmp_path / "m"), "--steps", "2"])
    assert done.exit_code == 0, done.output
    assert "trained 2 steps" in " ".join(done.output.split())
    assert json.loads((tmp_path / "m" / "tiny.json").read_text())["steps"] == 2
    assert HFGenerator(tmp_path / "m", device="cpu")._context() == 1024


@pytest.mark.slow
def test_the_tiny_tryout_config_runs_a_cycle_whose_prompts_fit(tmp_path):
    """configs/loop/tiny.toml with a small trained model whose 512 positions cannot hold three
    references beside 64 new tokens: every stored prompt fits, references dropped first."""
    from archrefine.core.config import load_config
    from archrefine.real import RealConfig, run
    from archrefine.real.candidates import CandidateStore

    model = build_tiny_model(tmp_path / "tiny", seed=0, steps=10, batch_size=4, lr=1e-2, **SMALL)
    path = Path(__file__).parent.parent / "configs" / "loop" / "tiny.toml"
    cfg = load_config(path, model=RealConfig).with_overrides(
        {"generator.model": str(model), "generator.max_new_tokens": 64, "loop.cycles": 1,
         "loop.population": 8,
         "loop.top_k": 2, "generator.retries": 0, "evaluate.max_train": 100}
    )  # fmt: skip
    frame = run(cfg, tmp_path / "run")
    assert list(frame.cycle) == [1]
    gen = HFGenerator(model, device="cpu")
    room = gen._context() - cfg.generator.max_new_tokens
    with CandidateStore(tmp_path / "run" / "candidates.sqlite") as store:
        prompts = list(store.to_frame().prompt)
    assert len(prompts) == 8
    assert all(len(gen._prompt_ids(p)) <= room for p in prompts)
    shown = [p.count("### Reference") for p in prompts]
    assert max(shown) >= 1 and min(shown) < cfg.prompt.references, shown
    state = json.loads((tmp_path / "run" / "generator" / "cycle-001" / "hf.json").read_text())
    assert state["lora"]["max_length"] == 1024


@pytest.mark.gpu
def test_generate_and_refine_on_cuda(tiny):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gen = HFGenerator(tiny, lora=FAST, device="cuda")
    out = gen.generate(PROMPTS, SAMPLING, seed=1)
    assert len(out) == 3 and gen.generate(PROMPTS, SAMPLING, seed=1) == out
    assert math.isfinite(gen.refine(PAIRS, 1))
    assert next(p for n, p in gen.model.named_parameters() if "lora_" in n).is_cuda
