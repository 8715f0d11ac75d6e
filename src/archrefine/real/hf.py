"""The `hf` text generator: a local Hugging Face causal LM, LoRA-refined on the selection.

Everything is local (`local_files_only=True`): the real loop must never download weights
mid-run, and a study names its model directory explicitly. Each cycle's `refine` continues
the *same* adapter with the *same* AdamW state, so a run resumed from `save`/`load` trains
exactly as one that never stopped. `prompt_fits` tells the loop how long a prompt may be, so it
drops references rather than have the prompt's start cut. `build_tiny_model` (real/tiny.py)
writes a tiny GPT-2, trained here if asked, to try the loop without a download.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from archrefine.real.prompts import prompt_room
from archrefine.real.text import GeneratorUnavailable, Sampling
from archrefine.real.tiny import build_tiny_model

try:  # heavy, optional (`archrefine[real]`): a missing one is reported when a generator starts
    import torch
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as _TARGETS
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.pytorch_utils import Conv1D

    _MISSING: str | None = None
except ImportError as error:  # pragma: no cover - exercised only without the extras
    _MISSING = str(error)

__all__ = ["HFGenerator", "LoraSettings", "build_tiny_model"]

_CHUNK = 8  # prompts per generate call: bounds activation and KV-cache memory


@dataclass(frozen=True)
class LoraSettings:
    """The adapter and its optimizer. Empty `target_modules`: peft's default for the model
    type, else every Linear/Conv1D layer (so an unknown architecture still trains)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    lr: float = 2e-4
    epochs: int = 1
    batch_size: int = 4
    max_length: int = 1024
    target_modules: tuple[str, ...] = ()


def _mix(seed: int, cycle: int) -> int:
    """One torch seed per (run seed, cycle): refinement depends on neither history nor resume."""
    return (seed * 1_000_003 + cycle) % (2**63)


class HFGenerator:
    """A local causal LM behind `TextGenerator`: batched sampling, LoRA refinement, resume."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        lora: LoraSettings = LoraSettings(),
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        if _MISSING is not None:
            raise GeneratorUnavailable(f"hf generator needs archrefine[real]: {_MISSING}")
        path = Path(model_path).expanduser()
        if not path.is_dir():
            raise GeneratorUnavailable(f"hf generator: no model directory at {path}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        except Exception as error:  # any failure to load means: no usable model at this path
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise GeneratorUnavailable(
                f"hf generator: cannot load a model from {path}: {first}"
            ) from None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:  # an unknown device, or one this machine or torch build lacks: one line
            self.device = torch.device(device)
            self.model = model.to(self.device).eval()
        except (RuntimeError, AssertionError, ValueError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise GeneratorUnavailable(
                f"generator.device: cannot use {device!r}: {first}"
            ) from None
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        self.path, self.lora, self.seed = path, lora, seed
        self.optimizer: torch.optim.Optimizer | None = None
        self.cycles = 0  # refinements so far
        self.last_cycle: int | None = None

    # -- prompts -------------------------------------------------------------------------------

    def _context(self) -> int:
        """Longest sequence the model takes (position embeddings), else the tokenizer's."""
        n = getattr(self.model.config, "max_position_embeddings", None)
        if not n:
            n = self.tokenizer.model_max_length if self.tokenizer.model_max_length < 1e6 else 2048
        return int(n)

    def prompt_fits(self, prompt: str, max_new_tokens: int) -> bool:
        """Whether `prompt`, as the model sees it, leaves `max_new_tokens` of context for the
        answer (`generate` would otherwise cut the prompt's start): the loop drops references
        until it does (`prompts.render_fitted`)."""
        room = prompt_room(self._context(), max_new_tokens)
        return len(self._prompt_ids(prompt)) <= room

    def _prompt_ids(self, prompt: str) -> list[int]:
        """The prompt as the model sees it: one user turn under a chat template, else raw text
        (with the tokenizer's own special tokens). Training formats prompts the same way."""
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )  # a str with tokenize=False (transformers 5 otherwise returns a BatchEncoding)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(prompt)["input_ids"]

    # -- TextGenerator -------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], sampling: Sampling, seed: int) -> list[str]:
        """Sample one completion per prompt; the same seed gives the same text (on one device)."""
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
        keep = prompt_room(self._context(), sampling.max_new_tokens)
        new = self._context() - keep  # prompts lose their start, not the request at the end
        pad = self.tokenizer.pad_token_id
        sample = sampling.temperature > 0
        knobs = dict(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        out: list[str] = []
        self.model.eval()
        for start in range(0, len(prompts), _CHUNK):
            ids = [self._prompt_ids(p)[-keep:] for p in prompts[start : start + _CHUNK]]
            width = max(len(i) for i in ids)
            input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
            mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
            with torch.no_grad():
                tokens = self.model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    do_sample=sample,
                    max_new_tokens=new,
                    pad_token_id=pad,
                    **(knobs if sample else {}),
                )
            out += self.tokenizer.batch_decode(tokens[:, width:], skip_special_tokens=True)
        return out

    def _targets(self) -> tuple[list[str], bool]:
        """Module names to adapt, and whether they are all GPT-2-style Conv1D (fan_in_fan_out)."""
        names = list(self.lora.target_modules) or list(
            _TARGETS.get(self.model.config.model_type, [])
        )
        layers = (torch.nn.Linear, Conv1D)
        if not names:  # peft knows no default for this architecture: adapt every projection
            found = {
                n.rsplit(".", 1)[-1] for n, m in self.model.named_modules() if isinstance(m, layers)
            }
            names = sorted(found - {"lm_head"})
        hits = [
            m
            for n, m in self.model.named_modules()
            if any(n == t or n.endswith("." + t) for t in names)
        ]
        return names, bool(hits) and all(isinstance(m, Conv1D) for m in hits)

    def _wrap(self) -> None:
        names, conv1d = self._targets()
        config = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=self.lora.rank,
            lora_alpha=self.lora.alpha,
            lora_dropout=self.lora.dropout,
            target_modules=names,
            fan_in_fan_out=conv1d,
        )
        self.model = get_peft_model(self.model, config).to(self.device)
        self._new_optimizer()

    def _new_optimizer(self) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.lora.lr)

    def _example(self, prompt: str, completion: str) -> tuple[list[int], list[int]]:
        """Token ids and labels: loss on the completion (and its eos) only; the prompt loses
        its start, the completion its end, when the pair is longer than allowed."""
        limit = min(self.lora.max_length, self._context())
        tail = self.tokenizer(completion, add_special_tokens=False)["input_ids"]
        tail = (tail + [self.tokenizer.eos_token_id])[:limit]
        head = self._prompt_ids(prompt)
        head = head[max(0, len(head) + len(tail) - limit) :]
        return head + tail, [-100] * len(head) + tail

    def refine(self, pairs: Sequence[tuple[str, str]], cycle: int) -> float | None:
        """Train the adapter on the cumulative pairs; the mean minibatch loss, None if empty."""
        if not pairs:
            return None
        # Seeded before the adapter exists: its initial weights (LoRA A) come from this RNG, which
        # must not depend on whether this process sampled earlier (a resumed run did not).
        torch.manual_seed(_mix(self.seed, cycle))  # dropout too: resume trains identically
        if self.optimizer is None:
            self._wrap()
        assert self.optimizer is not None
        order = torch.Generator().manual_seed(_mix(self.seed, cycle))
        examples = [self._example(p, c) for p, c in pairs]
        pad, size = self.tokenizer.pad_token_id, self.lora.batch_size
        losses: list[float] = []
        self.model.train()
        for _ in range(self.lora.epochs):
            perm = torch.randperm(len(examples), generator=order).tolist()
            for start in range(0, len(perm), size):
                batch = [examples[i] for i in perm[start : start + size]]
                width = max(len(ids) for ids, _ in batch)
                fill = [width - len(ids) for ids, _ in batch]
                input_ids = torch.tensor([ids + [pad] * f for (ids, _), f in zip(batch, fill)])
                labels = torch.tensor([lab + [-100] * f for (_, lab), f in zip(batch, fill)])
                mask = torch.tensor([[1] * len(ids) + [0] * f for (ids, _), f in zip(batch, fill)])
                loss = self.model(
                    input_ids=input_ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    labels=labels.to(self.device),
                ).loss
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                losses.append(float(loss.detach()))
        self.model.eval()
        self.cycles, self.last_cycle = self.cycles + 1, cycle
        return sum(losses) / len(losses) if losses else math.nan

    def save(self, directory: Path) -> None:
        """The adapter (not the base weights), the AdamW state, and a small JSON."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        adapter = self.optimizer is not None
        if adapter:
            assert self.optimizer is not None
            self.model.save_pretrained(directory / "adapter")
            torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")
        state = {
            "model": str(self.path),
            "adapter": adapter,
            "cycles": self.cycles,
            "last_cycle": self.last_cycle,
            "lora": {**asdict(self.lora), "target_modules": list(self.lora.target_modules)},
        }
        (directory / "hf.json").write_text(json.dumps(state, indent=1) + "\n")

    def load(self, directory: Path) -> None:
        """Restore what `save` wrote: the adapter stays trainable and AdamW continues."""
        directory = Path(directory)
        state = json.loads((directory / "hf.json").read_text())
        self.cycles, self.last_cycle = state["cycles"], state["last_cycle"]
        base = self.model.unload() if isinstance(self.model, PeftModel) else self.model
        self.model, self.optimizer = base, None
        if state["adapter"]:
            self.model = PeftModel.from_pretrained(base, directory / "adapter", is_trainable=True)
            self.model.to(self.device)
            self._new_optimizer()
            assert self.optimizer is not None
            saved = torch.load(
                directory / "optimizer.pt", map_location=self.device, weights_only=True
            )  # tensors only, never a pickle's code: generator/ is not covered by the digest
            self.optimizer.load_state_dict(saved)
        self.model.eval()

    def close(self) -> None:
        """Drop the model and optimizer (and the GPU memory they hold)."""
        self.model = self.optimizer = None  # type: ignore[assignment]
        if _MISSING is None and torch.cuda.is_available():
            torch.cuda.empty_cache()
