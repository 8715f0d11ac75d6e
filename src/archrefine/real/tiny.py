"""The hf try-out's model: a tiny GPT-2 and its tokenizer, built and trained here on the CPU.

A random GPT-2 writes gibberish: every candidate was `no_code`, nothing was selected and LoRA
never ran. So `build_tiny_model(steps=N)` trains the tiny model causally on answers shaped like
the loop's (one ```python block with a `Net` written by `space.to_source`), each after a prompt
rendered the loop's way (the built-in template, references dropped until the prompt leaves
room for the answer). The answers are KNOWN's sources, KNOWN's sequences with tokens replaced,
and uniformly random sequences, the last two kept only when `space.is_valid` accepts them: the
model learns the space, not a run; no candidate of any run is ever in its data. Everything is
drawn from `seed`, so a build is the same on the same machine and thread count.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from archrefine.core.config import ConfigError
from archrefine.core.store import StoreError, file_mode
from archrefine.real.config import PromptConfig
from archrefine.real.prompts import Reference, default_template, parse_template, prompt_room
from archrefine.real.prompts import render_fitted as _render_fitted
from archrefine.real.text import GeneratorUnavailable

try:  # heavy, optional (`archrefine[real]`)
    import torch

    _MISSING: str | None = None
except ImportError as error:  # pragma: no cover - exercised only without the extras
    _MISSING = str(error)

__all__ = [
    "TINY_MAX_NEW_TOKENS",
    "TINY_STEPS",
    "answer",
    "build_tiny_model",
    "completion_loss",
    "examples",
]

EOS = "<|endoftext|>"
TINY_MAX_NEW_TOKENS = 256  # the answer room prompts leave in training; configs/loop/tiny.toml's
TINY_STEPS = 300  # `archrefine tiny-model`'s default (docs/real-loop.md has what it costs)
_MUTATE = 0.1  # share of a KNOWN sequence's tokens replaced in a perturbed variant
_MIX = (0.3, 0.6, 0.1)  # KNOWN's own, KNOWN mutated, uniformly random (valid ones)
_INPUT_SHAPE, _CLASSES = (3, 32, 32), 10  # the loop's (real/loop.py)


def answer(seq: object) -> str:
    """A reply the way the loop wants one: the network's source in one ```python block."""
    from archrefine.space import to_source

    return f"```python\n{to_source(seq)}```\n"


def sequences(rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` valid sequences, in the shares `_MIX`: KNOWN's own, KNOWN's with `_MUTATE` of the
    tokens replaced, and uniformly random ones (about 1.4% are valid; those are kept)."""
    from archrefine.space import KNOWN_ARRAY, LENGTH, VOCAB, is_valid

    kinds = rng.choice(3, size=n, p=_MIX)
    out = KNOWN_ARRAY[rng.integers(0, len(KNOWN_ARRAY), n)].astype(np.int16)
    for kind in (1, 2):
        need = int((kinds == kind).sum())
        found: list[np.ndarray] = []
        while need > 0:
            if kind == 1:
                trial = KNOWN_ARRAY[rng.integers(0, len(KNOWN_ARRAY), 4 * need + 16)].copy()
                hit = rng.random(trial.shape) < _MUTATE
                trial[hit] = rng.integers(0, len(VOCAB), int(hit.sum()))
            else:
                trial = rng.integers(0, len(VOCAB), (100 * need + 100, LENGTH))
            good = trial[is_valid(trial)][:need]
            found.append(good.astype(np.int16))
            need -= len(good)
        if found:
            out[kinds == kind] = np.concatenate(found)
    return out


def _references(rng: np.random.Generator, k: int) -> list[Reference]:
    """References as the loop shows them: KNOWN's designs by name (cycle 1), or earlier
    rounds' networks with an accuracy and a parameter count (here random: the prompt only)."""
    from archrefine.space import KNOWN, to_source

    if rng.random() < 0.5:
        names = list(KNOWN)
        picked = sorted(rng.choice(len(names), size=min(k, len(names)), replace=False))
        return [Reference(to_source(KNOWN[names[i]]), name=names[i]) for i in picked]
    seqs = sequences(rng, k)
    accuracy = np.sort(rng.uniform(0.1, 0.95, k))[::-1]
    params = rng.integers(2_000, 1_000_000, k)
    return [Reference(to_source(s), float(a), int(p)) for s, a, p in zip(seqs, accuracy, params)]


def examples(
    seed: int,
    count_tokens: Callable[[str], int],
    context: int,
    *,
    max_new_tokens: int = TINY_MAX_NEW_TOKENS,
    references: int = PromptConfig().references,
) -> Iterator[tuple[str, str]]:
    """Endless (prompt, answer) pairs drawn from `seed`: the prompt fits the rule the loop
    uses (`prompt_room(context, max_new_tokens)` tokens, references dropped first)."""
    rng = np.random.default_rng([seed, 0x7469])
    template, cfg = parse_template(default_template(), "the built-in"), PromptConfig()
    room = prompt_room(context, max_new_tokens)
    while True:
        completion = answer(sequences(rng, 1)[0])
        prompt, _ = _render_fitted(
            template, cfg, _references(rng, int(rng.integers(1, references + 1))),
            input_shape=_INPUT_SHAPE,
            classes=_CLASSES, fits=lambda p: count_tokens(p) <= room,
        )  # fmt: skip
        yield prompt, completion


def _default_corpus(seed: int = 0) -> list[str]:
    """What the tokenizer learns from: KNOWN's sources, valid variants, and rendered prompts."""
    rng = np.random.default_rng([seed, 0x746F])
    template, cfg = parse_template(default_template(), "the built-in"), PromptConfig()
    texts = [answer(s) for s in sequences(rng, 300)]
    texts += [
        _render_fitted(
            template, cfg, _references(rng, 1), input_shape=_INPUT_SHAPE, classes=_CLASSES
        )[0]  # fmt: skip
        for _ in range(20)
    ]
    return texts


def _batch(
    pairs: Iterable[tuple[str, str]], encode: Callable[[str], list[int]], eos: int, context: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels (loss on the answer and its eos only)."""
    rows = []
    for prompt, completion in pairs:
        head, tail = encode(prompt), encode(completion) + [eos]
        rows.append(((head + tail)[:context], ([-100] * len(head) + tail)[:context]))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([i + [eos] * (width - len(i)) for i, _ in rows])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    return ids, mask, labels


def completion_loss(model_dir: str | Path, pairs: list[tuple[str, str]]) -> float:
    """Mean per-token loss of the model in `model_dir` on the answers of `pairs` (prompts given)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    return _loss(model, tokenizer, pairs)


def _loss(model, tokenizer, pairs: list[tuple[str, str]]) -> float:
    def encode(text: str) -> list[int]:
        return tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids

    total = count = 0.0
    with torch.no_grad():
        for start in range(0, len(pairs), 4):
            ids, mask, labels = _batch(
                pairs[start : start + 4], encode, tokenizer.eos_token_id, model.config.n_positions
            )
            n = int((labels[:, 1:] != -100).sum())  # the tokens the shifted loss counts
            total += float(model(input_ids=ids, attention_mask=mask, labels=labels).loss) * n
            count += n
    return total / count


def _answer_loss(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor):
    """The causal LM loss, with logits computed only where there is a label: the prompt is
    most of each sequence, and the vocabulary projection most of a tiny model's compute."""
    hidden = model.transformer(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    target = labels[:, 1:]
    keep = target != -100
    return torch.nn.functional.cross_entropy(model.lm_head(hidden[keep]), target[keep])


def _train(model, tokenizer, seed: int, steps: int, batch: int, lr: float, on_step) -> list[float]:
    """AdamW with warm-up and cosine decay; a fresh batch of `examples` per step."""
    context = model.config.n_positions

    def encode(text: str) -> list[int]:
        return tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids

    stream = examples(seed, lambda p: len(encode(p)), context)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warm if s < warm
        else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))),
    )  # fmt: skip
    losses: list[float] = []
    model.train()
    for step in range(steps):
        pairs = [next(stream) for _ in range(batch)]
        pairs = [(p, c) for p, c in pairs if len(encode(c)) < TINY_MAX_NEW_TOKENS] or pairs
        loss = _answer_loss(model, *_batch(pairs, encode, tokenizer.eos_token_id, context))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, steps, losses[-1])
    model.eval()
    return losses


def build_tiny_model(
    directory: str | Path,
    *,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 2,
    vocab_size: int = 4096,
    n_positions: int = 1024,
    steps: int = 0,
    batch_size: int = 8,
    lr: float = 3e-3,
    on_step: Callable[[int, int, float], None] | None = None,
    force: bool = False,
) -> Path:
    """Write a tiny GPT-2 and a byte-level BPE tokenizer trained on `corpus` (default: KNOWN's
    sources, valid variants and rendered prompts) to `directory`, loadable by `HFGenerator`.

    `steps=0` leaves the weights random (seconds: what the loop tests need); `steps > 0`
    trains on `examples(seed)` first (`on_step(step, steps, loss)` after each). Deterministic per
    seed. The files are written beside `directory` and moved in one by one when all exist,
    with the mode the umask gives (as `core.store`'s writers); none is left behind on failure.
    `directory` is checked first (`check_directory`): a file, or a directory holding other
    things than a tiny model unless `force`, is refused before any training.
    """
    if _MISSING is not None:
        raise GeneratorUnavailable(f"build_tiny_model needs archrefine[real]: {_MISSING}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ConfigError(f"--seed: must be an integer from 0 to 2**63 - 1 (got {seed!r})")
    check_directory(Path(directory), force=force)
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    if steps and n_positions <= TINY_MAX_NEW_TOKENS:
        raise ValueError(f"n_positions ({n_positions}) leaves no room for a prompt")
    directory = Path(directory)
    began = time.time()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(  # merges within a line, across its spaces
        [
            pre_tokenizers.Split(Regex("\n"), behavior="merged_with_previous"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(corpus if corpus is not None else _default_corpus(seed)), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, pad_token=EOS, unk_token=EOS
    )
    tokenizer.model_max_length = n_positions
    eos_id = bpe.token_to_id(EOS)
    config = GPT2Config(
        vocab_size=bpe.get_vocab_size(),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]):  # deterministic without touching the caller's RNG
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
        if steps:
            losses = _train(model, tokenizer, seed, steps, batch_size, lr, on_step)
    partial = directory.with_name(f".{directory.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        tokenizer.save_pretrained(partial)
        model.save_pretrained(partial)
        if steps:
            record = dict(seed=seed, steps=steps, batch_size=batch_size, lr=lr,
                          max_new_tokens=TINY_MAX_NEW_TOKENS, first_loss=losses[0],
                          last_loss=losses[-1], seconds=round(time.time() - began, 1))  # fmt: skip
            (partial / "tiny.json").write_text(json.dumps(record, indent=1) + "\n")
        for path in partial.iterdir():  # safetensors writes 0600 whatever the umask
            os.chmod(path, file_mode())
        check_directory(directory, force=force)  # again: it may have changed while training
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tiny.json").unlink(missing_ok=True)  # an earlier build's record
        for path in sorted(partial.iterdir()):
            os.replace(path, directory / path.name)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return directory


#: what a build writes (transformers versions differ in the tokenizer's files)
MODEL_FILES = frozenset(
    {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
     "tokenizer_config.json", "special_tokens_map.json", "tiny.json"}
)  # fmt: skip


def check_directory(directory: Path, *, force: bool = False) -> None:
    """Refuse (a StoreError, one line) a `directory` that is a file, or a directory holding
    anything but an earlier build's files (a run's results would be mixed with the model's)
    unless `force`."""
    try:
        if directory.exists() and not directory.is_dir():
            raise StoreError(f"{directory}: exists and is not a directory; choose another")
        other = sorted(p.name for p in directory.iterdir() if p.name not in MODEL_FILES) if (
            directory.is_dir()
        ) else []  # fmt: skip
    except OSError as err:
        raise StoreError(f"{directory}: cannot hold the model ({err.strerror or err})") from None
    if other and not force:
        shown = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")
        raise StoreError(
            f"{directory}: not empty and not a tiny model (holds {shown}); choose another "
            "directory or pass --force"
        )
