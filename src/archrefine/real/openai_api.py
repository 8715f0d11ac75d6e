"""The `openai` text generator: any OpenAI-compatible server (vLLM, llama.cpp, OpenAI itself).

The model runs elsewhere, so this backend only samples: one request per prompt, several in
flight at once (servers batch concurrent requests themselves), each seeded so a cycle can be
reproduced where the server honours `seed`. Retries are the official client's (exponential
backoff with jitter); its HTTP client is ours (`http_limits`: a deadline per request as a whole,
a cap on the reply's size); every failure the loop can meet comes back as a one-line
`GeneratorUnavailable` naming the server, so a run stops cleanly and `--resume` continues it.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

from archrefine.real.text import GeneratorUnavailable, Sampling
from archrefine.sandbox.sandbox import one_line

try:  # optional (`archrefine[real]`): a missing client is reported when a generator starts
    import openai

    from archrefine.real.http_limits import ReplyTooLarge, bounded_client, httpx, requests_sent

    _MISSING: str | None = None
except ImportError as error:  # pragma: no cover - exercised only without the extra
    _MISSING = str(error)

__all__ = ["OpenAIGenerator"]

_T = TypeVar("_T")


class OpenAIGenerator:
    """A remote model behind `TextGenerator`, through the official `openai` client.

    `base_url` falls back to `OPENAI_BASE_URL`; with neither, GeneratorUnavailable (a run never
    goes to the public OpenAI endpoint unasked: name it, https://api.openai.com/v1, to use it);
    `api_key` to `OPENAI_API_KEY`, then "EMPTY" (local servers ignore it); an empty `model` to
    `OPENAI_MODEL`, then the first model the server lists (asked now, so a wrong URL fails at
    start rather than mid-run). `api="completions"` sends the raw prompt (base models, llama.cpp
    without a chat template) and ignores `system`. `top_k` travels in the request body as
    vLLM and llama.cpp expect; the OpenAI API itself rejects it.
    """

    def __init__(
        self,
        model: str = "",
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api: Literal["chat", "completions"] = "chat",
        timeout_s: float = 120,
        max_retries: int = 3,
        concurrency: int = 4,
        system: str | None = None,
    ) -> None:
        if _MISSING is not None:
            raise GeneratorUnavailable(
                f"the openai generator needs the openai package ({_MISSING}); "
                "install it with: pip install 'archrefine[real]'"
            )
        if api not in ("chat", "completions"):
            raise ValueError(f"api must be 'chat' or 'completions', not {api!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.api = api
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.concurrency = int(concurrency)
        self.system = system
        url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not url:
            raise GeneratorUnavailable(
                "the openai generator needs a server: set generator.base_url or $OPENAI_BASE_URL"
            )
        self.client = openai.OpenAI(
            base_url=url,
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
            timeout=self.timeout_s,
            max_retries=self.max_retries,
            http_client=bounded_client(self.timeout_s),
        )
        self.base_url = str(self.client.base_url).rstrip("/")
        try:
            self.model = model or os.environ.get("OPENAI_MODEL") or self._discover()
        except BaseException:
            self.client.close()
            raise

    def generate(self, prompts: Sequence[str], sampling: Sampling, seed: int) -> list[str]:
        """One request per prompt, `concurrency` at a time; prompt i is sampled with `seed + i`,
        so the batch is reproducible whatever order the requests finish in."""
        if not prompts:
            return []
        workers = min(self.concurrency, len(prompts))
        with ThreadPoolExecutor(workers, thread_name_prefix="openai") as pool:
            futures = [
                pool.submit(self._call, self._complete, prompt, sampling, seed + i)
                for i, prompt in enumerate(prompts)
            ]
            try:
                return [future.result() for future in futures]
            except BaseException:  # stop queued requests: the batch has failed
                for future in futures:
                    future.cancel()
                raise

    def refine(self, pairs: Sequence[tuple[str, str]], cycle: int) -> float | None:
        """Nothing to train: a remote model's weights are not ours. This backend's refinement
        is the prompt itself, which the loop rewrites each cycle with the current selection as
        its reference examples (in-context, not gradient, fine-tuning). Returns None."""
        return None

    def save(self, directory: Path) -> None:
        """Record which server and model the run used (the only state there is)."""
        directory.mkdir(parents=True, exist_ok=True)
        state = {"model": self.model, "base_url": self.base_url, "api": self.api}
        (directory / "openai.json").write_text(json.dumps(state, indent=2) + "\n")

    def load(self, directory: Path) -> None:
        """Nothing to restore; the settings given now win, with a warning if they differ from
        the saved ones (a resumed run on another model is a different experiment)."""
        saved = json.loads((directory / "openai.json").read_text())
        now = {"model": self.model, "base_url": self.base_url, "api": self.api}
        changed = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in now.items() if saved.get(k) != v]
        if changed:
            warnings.warn("resuming with another openai setup: " + ", ".join(changed), stacklevel=2)

    def close(self) -> None:
        self.client.close()

    def _complete(self, prompt: str, sampling: Sampling, seed: int) -> str:
        """One completion, re-asked (with backoff) while the server's answer is unusable: not
        JSON, not a completion (an HTML error page), no choices, no text. The client retries
        transport and HTTP errors itself; these it would pass through as exceptions or empty
        answers, which the loop must not store as the model's. Both kinds of retry draw on one
        budget of `max_retries + 1` requests per prompt (each ask lets the client retry only
        what is left), so a server failing both ways costs that many requests, not its square."""
        budget, first = self.max_retries + 1, requests_sent()
        answers, problem = 0, ""
        while True:
            used = max(requests_sent() - first, answers)  # an answer took at least a request
            if used >= budget:
                raise GeneratorUnavailable(
                    f"the OpenAI-compatible server at {self.base_url} gave an unusable answer "
                    f"{answers} time(s) in {used} request(s): {problem}"
                )
            if answers:
                time.sleep(min(0.25 * 2 ** (answers - 1), 8.0))
            client = self.client.with_options(max_retries=budget - used - 1)
            try:
                return self._answer(client, prompt, sampling, seed)
            except _Unusable as err:
                problem, answers = str(err), answers + 1

    def _answer(self, client: Any, prompt: str, sampling: Sampling, seed: int) -> str:
        common: dict[str, Any] = {
            "model": self.model,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
            "seed": seed,
            "extra_body": {"top_k": sampling.top_k},
        }
        try:
            if self.api == "chat":
                system = [{"role": "system", "content": self.system}] if self.system else []
                messages = [*system, {"role": "user", "content": prompt}]
                reply: Any = client.chat.completions.create(messages=messages, **common)
            else:
                reply = client.completions.create(prompt=prompt, **common)
        except openai.OpenAIError:
            raise
        except Exception as err:  # noqa: BLE001 - malformed or too deeply nested JSON
            raise _Unusable(f"not a JSON completion ({_what(err)})") from None
        choices = getattr(reply, "choices", None)
        if not isinstance(choices, list):
            raise _Unusable(f"not a completion object (a {type(reply).__name__})")
        if not choices:
            raise _Unusable("a completion with no choices")
        answered = getattr(reply, "model", None)
        if isinstance(answered, str) and answered and not _same_model(answered, self.model):
            raise GeneratorUnavailable(
                f"the OpenAI-compatible server at {self.base_url} answered for model "
                f"{one_line(answered, 80)!r}, not {self.model!r}: a run must not mix models "
                "(set generator.model to the model it serves)"
            )
        first = choices[0]
        if self.api == "chat":
            message = getattr(first, "message", None)
            if message is not None and not hasattr(message, "content"):  # e.g. a bare string
                raise _Unusable(f"a choice whose message is a {type(message).__name__}")
            text = _text(getattr(message, "content", None)) if message is not None else None
        else:
            text = getattr(first, "text", None)
        if text is None and getattr(first, "finish_reason", None) in ("stop", "length"):
            return ""  # the model wrote nothing: the loop records no_code
        if not isinstance(text, str):
            raise _Unusable("a choice with no text")
        return text

    def _discover(self) -> str:
        """The first model the server lists: a local server usually serves exactly one."""
        models = self._call(lambda: [m.id for m in self.client.models.list()])
        if not models:
            raise GeneratorUnavailable(
                f"the OpenAI-compatible server at {self.base_url} lists no models; name one"
            )
        first: object = models[0]
        # the id is the server's word: it names the model in every request and in the saved
        # state, so anything but a short printable name (a number, null, "", a megabyte) is
        # refused here rather than failing later as a confusing mismatch
        if not (isinstance(first, str) and 0 < len(first) <= 256 and first.isprintable()):
            what = f"{len(first):,} characters" if isinstance(first, str) else type(first).__name__
            raise GeneratorUnavailable(
                f"the OpenAI-compatible server at {self.base_url} lists a model id that is not "
                f"a name ({what}); set generator.model"
            )
        return first

    def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """`fn(*args)`, the client's errors turned into one-line `GeneratorUnavailable`s."""
        url = self.base_url
        try:
            return fn(*args)
        except openai.APITimeoutError as e:  # before APIConnectionError: it is a subclass
            raise GeneratorUnavailable(
                f"the OpenAI-compatible server at {url} did not answer within "
                f"{self.timeout_s:g} s ({self.max_retries} retries)"
            ) from e
        except openai.APIConnectionError as e:
            if isinstance(e.__cause__, ReplyTooLarge | httpx.DecodingError):  # size, encoding
                raise GeneratorUnavailable(
                    f"the OpenAI-compatible server at {url} gave an unusable answer "
                    f"({self.max_retries} retries): {one_line(e.__cause__)}"
                ) from e
            reason = one_line(e.__cause__ or e.message) or type(e.__cause__).__name__
            raise GeneratorUnavailable(
                f"cannot reach the OpenAI-compatible server at {url} ({reason})"
            ) from e
        except openai.APIStatusError as e:
            body = e.body
            message = body.get("message") if isinstance(body, dict) else body
            raise GeneratorUnavailable(
                f"the OpenAI-compatible server at {url} answered HTTP {e.status_code}: "
                f"{one_line(message or e.message)}"
            ) from e
        except openai.OpenAIError as e:
            raise GeneratorUnavailable(
                f"the OpenAI-compatible server at {url} gave an unusable answer ({one_line(e)})"
            ) from e
        except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as e:
            raise GeneratorUnavailable(
                f"the OpenAI-compatible server at {url} gave an unusable answer ({_what(e)})"
            ) from None


def _text(content: object) -> object:
    """A message's text: a string, or the text parts of a list of content parts joined (the
    newer chat format); anything else is returned as is, to be refused by the caller."""
    if isinstance(content, list) and content:
        parts = [p.get("text") if isinstance(p, dict) else getattr(p, "text", None)
                 for p in content]  # fmt: skip
        if all(isinstance(p, str) for p in parts):
            return "".join(parts)
    return content


def _same_model(answered: str, asked: str) -> bool:
    """A server may name a dated or tagged variant of the model asked for (`gpt-4o` →
    `gpt-4o-2024-08-06`, `llama3` → `llama3:latest`, a path → its last part), not another."""
    a, b = answered.strip().lower(), asked.strip().lower()
    tail = b.rstrip("/").rsplit("/", 1)[-1]
    return any(a == x or a.startswith(x + s) for x in (b, tail) for s in ("-", ":", "@"))


class _Unusable(Exception):
    """An answer that is not a completion with text; retried, then GeneratorUnavailable."""


def _what(err: BaseException) -> str:
    return one_line(f"{type(err).__name__}: {err}", 120)
