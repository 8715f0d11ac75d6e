"""Prompts as editable template files: the task, the data, the budget, the references, the contract.

A template is plain text with `$placeholders` (Python's `string.Template`): `$task`, `$dataset`,
`$input_shape`, `$classes`, `$param_budget` and `$references` (the reference architectures,
with their scores, as ```python blocks). The built-in template is
`archrefine/data/prompts/default.txt`; copy it, edit it, and point `prompt.template` at the copy.

A prompt must leave the model room for its answer. A generator that knows its context (`hf`:
its tokenizer and position count) has `prompt_fits(prompt, max_new_tokens)`; the loop then
renders with `render_fitted`, which drops references (the lowest-ranked first) until the prompt
fits, so the task, the budget and the output contract are never what gets cut. Generators
without it (`learned`, `openai`) take every prompt as it is.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from archrefine.core.config import ConfigError
from archrefine.core.config_base import read_text_file
from archrefine.real.config import PromptConfig

TEMPLATE_FILE = "prompt.txt"  # the run directory's copy of the template it started with
PLACEHOLDERS = ("task", "dataset", "input_shape", "classes", "param_budget", "references")
MAX_REFERENCE_CODE = 12_000
"""Characters of code a selected candidate may have and still be shown as a reference (KNOWN's
longest is ~2,500). A selected network padded with a 190 KB comment made every later prompt
~570 KB, past any server's context: the `openai` run stopped, and stopped again on each
`--resume`, since the selection is stored. Longer ones stay selected, never shown."""


@dataclass(frozen=True)
class Reference:
    """One reference architecture shown in a prompt; `accuracy` is None for a known design."""

    code: str
    accuracy: float | None = None
    params: int | None = None
    name: str = ""
    cid: int | None = None  # the candidate's id in the run's store (its parent id)


def default_template() -> str:
    return (files("archrefine") / "data" / "prompts" / "default.txt").read_text()


def template_text(path: str, *, references: int = 0) -> str:
    """The text of the template at `path` (the built-in one when empty), checked: a FIFO, a
    device or a huge file is refused unread, and so is a blank template, or (with `references`
    to show) one without `$references`, which would silently never show them."""
    if path:
        try:
            text = read_text_file(path)
        except (OSError, UnicodeDecodeError) as err:
            why = getattr(err, "strerror", None) or "not UTF-8 text"
            raise ConfigError(f"prompt.template: cannot read {path} ({why})") from None
        if not text.strip():
            raise ConfigError(f"prompt.template: {path} is empty; write the prompt into it")
    else:
        text = default_template()
    parse_template(text, path or "the built-in")
    if references and not _names(text, "references"):
        raise ConfigError(
            f"prompt.template: {path or 'the built-in template'} has no $references, so the "
            f"{references} reference architectures per prompt would never be shown; add "
            "$references or set prompt.references = 0"
        )
    return text


def _names(text: str, name: str) -> bool:
    """Whether the template `text` uses the placeholder `name` ($name or ${name})."""
    return any(
        (m.group("named") or m.group("braced")) == name
        for m in string.Template.pattern.finditer(text)
    )


def load_template(path: str) -> string.Template:
    """The template at `path` (the built-in one when empty), checked for unknown placeholders."""
    return parse_template(template_text(path), path or "the built-in")


def read_template(run_dir: Path) -> string.Template:
    """The run's own copy of its template (`TEMPLATE_FILE`, written when the run started): a
    resumed run reads no file outside its directory, whatever its config.toml names."""
    path = Path(run_dir) / TEMPLATE_FILE
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        raise ConfigError(f"{path}: missing or unreadable (the run's prompt template)") from None
    return parse_template(text, str(path))


def parse_template(text: str, name: str) -> string.Template:
    """`text` as a template, with unknown or malformed placeholders reported against `name`."""
    path = name if name != "the built-in" else ""
    template = string.Template(text)
    try:  # substitute with dummies: an unknown or malformed placeholder fails here, not mid-run
        template.substitute({name: "" for name in PLACEHOLDERS})
    except KeyError as err:
        allowed = ", ".join(f"${p}" for p in PLACEHOLDERS)
        raise ConfigError(
            f"prompt.template: unknown placeholder ${err.args[0]} in {path or 'the built-in'}"
            f" template (allowed: {allowed})"
        ) from None
    except ValueError as err:
        raise ConfigError(f"prompt.template: {err} in {path or 'the built-in'} template") from None
    return template


def render(
    template: string.Template,
    cfg: PromptConfig,
    references: list[Reference],
    *,
    input_shape: tuple[int, ...],
    classes: int,
) -> str:
    return template.substitute(
        task=cfg.task,
        dataset=cfg.dataset,
        input_shape=", ".join(str(d) for d in input_shape),
        classes=classes,
        param_budget=f"{cfg.param_budget:,}",
        references=references_block(references),
    )


def prompt_room(context: int, max_new_tokens: int) -> int:
    """Prompt tokens a model with `context` positions takes while keeping `max_new_tokens`
    (at least one, at most context - 1) for its answer."""
    return context - max(1, min(max_new_tokens, context - 1))


def prompt_check(generator: object, max_new_tokens: int) -> Callable[[str], bool] | None:
    """The generator's `prompt_fits` with `max_new_tokens` bound, or None when it has none."""
    fits = getattr(generator, "prompt_fits", None)
    return None if fits is None else (lambda prompt: bool(fits(prompt, max_new_tokens)))


def render_fitted(
    template: string.Template,
    cfg: PromptConfig,
    references: list[Reference],
    *,
    input_shape: tuple[int, ...],
    classes: int,
    fits: Callable[[str], bool] | None = None,
) -> tuple[str, list[Reference]]:
    """The prompt with the longest prefix of `references` (in their order, best first) for
    which `fits(prompt)` holds, and that prefix; with none fitting, the prompt without
    references (the generator then cuts its start). `fits=None`: every reference is kept."""
    kept = list(references)
    while True:
        prompt = render(template, cfg, kept, input_shape=input_shape, classes=classes)
        if fits is None or not kept or fits(prompt):
            return prompt, kept
        kept.pop()


def references_block(references: list[Reference]) -> str:
    if not references:
        return "There are no reference architectures yet: design one from scratch."
    scored = any(r.accuracy is not None for r in references)
    head = (
        "Reference architectures from earlier rounds, with their accuracy after one epoch:"
        if scored
        else "Reference architectures (well-known designs):"
    )
    parts = [head]
    for i, ref in enumerate(references, 1):
        notes = [ref.name] if ref.name else []
        if ref.accuracy is not None:
            notes.append(f"accuracy {ref.accuracy:.3f}")
        if ref.params is not None:
            notes.append(f"{_count(ref.params)} parameters")
        title = f"Reference {i}" + (f" ({', '.join(notes)})" if notes else "")
        parts.append(f"### {title}\n```python\n{ref.code.rstrip()}\n```")
    return "\n\n".join(parts)


def _count(n: int) -> str:
    """`n` with thousands separators, or its order of magnitude past 10**15: a count the
    candidate's own process reports may have 4,300 digits (5.7 KB in every later prompt)."""
    return f"{n:,}" if n < 10**15 else f"about 10^{len(str(n)) - 1}"
