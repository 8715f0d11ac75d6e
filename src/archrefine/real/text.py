"""The real loop's side of the generator role: prompts in, responses out, refined on selections.

The simulator's generators (`base.Generator`) propose token arrays from a template pool and
refine on the selection; a real generator does the same in text. The loop (`archrefine.real`)
writes each prompt with the current selection as its reference architectures (the templates),
asks the generator for one response per prompt, and after selection calls `refine` with the
cumulative prompt–completion pairs (the fine-tuning set). The schedule's mutation rate reaches a
text generator as sampling temperature, `temperature + temperature_span · rate`, the mapping the
learned generator uses too.

Three backends implement `TextGenerator`: `hf` (a local Hugging Face causal LM, LoRA-refined),
`openai` (any OpenAI-compatible server; refining is the prompt's fresh references) and `learned`
(the small transformer of `generators/learned.py`, writing grounded token sequences that
`space.to_source` renders as code).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable
from zipfile import BadZipFile

import numpy as np

__all__ = ["LearnedTextGenerator", "Sampling", "TextGenerator", "GeneratorUnavailable"]


class GeneratorUnavailable(RuntimeError):
    """The generator cannot answer (server down, model missing); one line naming the problem.

    The loop stops on it with everything produced so far stored, so `--resume` can continue."""


@dataclass(frozen=True)
class Sampling:
    """How to sample one batch of responses. `rate` is the schedule's mutation rate this cycle
    (NaN in cycle 1); LLM backends see it only through `temperature`, already mapped."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 50
    max_new_tokens: int = 1024
    rate: float = float("nan")


@runtime_checkable
class TextGenerator(Protocol):
    """One response per prompt; refine on a cumulative fine-tuning set; save/load for resume."""

    def generate(self, prompts: Sequence[str], sampling: Sampling, seed: int) -> list[str]:
        """One completion per prompt, in order; deterministic for a given `seed` where the
        backend allows it. Raises GeneratorUnavailable when the backend cannot answer."""
        ...

    def refine(self, pairs: Sequence[tuple[str, str]], cycle: int) -> float | None:
        """Learn from the cumulative `(prompt, completion)` set after `cycle`; return the mean
        training loss of this refinement, or None when the backend does not train."""
        ...

    def save(self, directory: Path) -> None:
        """Write what `load` needs to continue after this cycle (e.g. the LoRA adapter)."""
        ...

    def load(self, directory: Path) -> None:
        """Restore the state `save` wrote (resume)."""
        ...

    def close(self) -> None: ...


# one run of blanks unless a tag splits it: `[ \t]*(?:python|py)?[ \t]*` backtracked quadratically
_BLOCK = re.compile(r"^```[ \t]*(?:(?:python|py)[ \t]*)?\n(.*?)^```", re.M | re.S)


class LearnedTextGenerator:
    """The learned generator (one trial) behind the text interface.

    It writes grounded token sequences: a buildable one comes back as the code `to_source`
    writes, an unbuildable one as plain text naming its tokens, which the loop's parser records
    as `no_code` (the model's output is not a network). It reads code the way the loop's
    novelty does: the prompt's ```python reference blocks, mapped into the grounded vocabulary
    (`fingerprint` → `to_tokens`), are the templates it mutates at the sampling `rate`, and the
    selected completions, mapped the same way, are what it fine-tunes on.
    """

    def __init__(self, config=None, *, seed: int = 0) -> None:
        from archrefine.core.config import LearnedConfig
        from archrefine.sim.learned import LearnedGenerator

        self.config = config or LearnedConfig()
        self.seed = seed
        self.model = LearnedGenerator(
            self.config, trials=1, length=15, vocab=30, rng=np.random.default_rng(seed)
        )
        self._seen = 0  # pairs already added to the model's fine-tuning set

    def generate(self, prompts: Sequence[str], sampling: Sampling, seed: int) -> list[str]:
        from archrefine.space import VOCAB, is_valid, to_source

        self.model.rng = np.random.default_rng(seed)
        self.model.g.manual_seed(seed)
        refs = [_tokens_in(p) for p in prompts]
        pool = np.array([r for rs in refs for r in rs] or [[0] * 15], dtype=np.int16)
        rate = sampling.rate
        size = np.array([len(pool) if any(refs) else 0])
        cands = self.model.propose(pool[None], size, len(prompts), rate, 0.0)
        out = []
        seqs = cands.seqs[0]
        for seq, valid in zip(seqs, is_valid(seqs)):  # one batched check
            if valid:
                out.append(f"```python\n{to_source(seq)}```\n")
            else:
                out.append(f"A network with layers: {' '.join(VOCAB[int(t)] for t in seq)}.\n")
        return out

    def refine(self, pairs: Sequence[tuple[str, str]], cycle: int) -> float | None:
        """Fine-tune on the pairs not seen yet. The minibatch draws are seeded by (seed, cycle),
        not by whatever sampling ran before: a cycle whose candidates were generated before a
        kill and are not generated again after `--resume` trains exactly the same."""
        state = np.random.SeedSequence([self.seed, cycle, 0x7265]).generate_state(2)
        self.model.g.manual_seed(int(state[0]) << 32 | int(state[1]))
        new = [_tokens_in(c) for _, c in pairs[self._seen :]]
        seqs = np.array([s[0] for s in new if s], dtype=np.int16).reshape(-1, 15)
        self._seen = len(pairs)
        self.model.refine(seqs[None], np.array([len(seqs)]))
        loss = float(self.model.last_loss[0])
        return loss if np.isfinite(loss) else None

    def save(self, directory: Path) -> None:
        """The model's checkpoint state (plain arrays, read back without pickle) and how many
        pairs it has learned from."""
        from archrefine.core.store import atomic_file, atomic_write_text

        with atomic_file(directory / "learned.npz") as f:  # a kill never leaves half a file
            np.savez(f, **self.model.state())
        atomic_write_text(directory / "learned.json", json.dumps({"seen": self._seen}))

    def load(self, directory: Path) -> None:
        """Restore what `save` wrote; a missing or damaged file is a StoreError (one line)
        naming it, never a traceback of the zip, JSON or torch reader."""
        from archrefine.core.store import StoreError

        path = directory / "learned.json"
        try:
            saved = json.loads(path.read_text())
            seen = saved.get("seen") if isinstance(saved, dict) else None
            if not isinstance(seen, int) or isinstance(seen, bool) or seen < 0:
                raise ValueError('no count of pairs seen ("seen")')
            path = directory / "learned.npz"
            with np.load(path, allow_pickle=False) as state:
                self.model.load_state(dict(state))
        except (OSError, EOFError, ValueError, RuntimeError, BadZipFile) as err:
            why = (str(err).splitlines() or [type(err).__name__])[0]
            raise StoreError(f"{path}: not a readable generator state ({why})") from None
        self._seen = seen

    def close(self) -> None:
        pass


def _tokens_in(text: str) -> list[list[int]]:
    """The grounded sequences (padded with `none` to 15) of the code blocks in `text` whose
    structure maps into the grounded vocabulary; blocks that do not map are skipped."""
    from archrefine.code.fingerprint import fingerprint
    from archrefine.code.tokens import to_tokens
    from archrefine.space import LENGTH, token_id

    out = []
    for match in _BLOCK.finditer(text):
        try:
            seq = to_tokens(fingerprint(match.group(1)))
        except Exception:  # noqa: BLE001 - CodeError, or anything hostile text still raises:
            continue  # a block after the first is never fingerprinted before it reaches here
        if seq is not None:
            out.append(seq + [token_id("none")] * (LENGTH - len(seq)))
    return out
