"""The `hf` generator, really, on a tiny local GPT-2 built here (no download, CPU, seconds)."""

from __future__ import annotations

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

from archrefine.real.hf import HFGenerator, LoraSettings, build_tiny_model  # noqa: E402
from archrefine.real.text import GeneratorUnavailable, Sampling, TextGenerator  # noqa: E402

SAMPLING = Sampling(temperature=1.0, max_new_tokens=12)
PROMPTS = ["Write a PyTorch module `Net`.", "Propose a new architecture.", "hi"]
PAIRS = [
    ("Write a network:", "```python\nimport torch\nfrom torch import nn\n```\n"),
    ("Another one:", "class Net(nn.Module):\n    def forward(self, x):\n        return x\n"),
    ("A third:", "self.fc1 = nn.Linear(400, 128)\n"),
] * 2
FAST = LoraSettings(lr=1e-2, batch_size=2)
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


@pytest.mark.gpu
def test_generate_and_refine_on_cuda(tiny):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gen = HFGenerator(tiny, lora=FAST, device="cuda")
    out = gen.generate(PROMPTS, SAMPLING, seed=1)
    assert len(out) == 3 and gen.generate(PROMPTS, SAMPLING, seed=1) == out
    assert math.isfinite(gen.refine(PAIRS, 1))
    assert next(p for n, p in gen.model.named_parameters() if "lora_" in n).is_cuda
