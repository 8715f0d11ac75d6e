"""One model reply → one stored candidate row, whatever the reply holds.

The reply is hostile text: it may be huge, hold lone surrogates or NUL bytes, nest too deeply
for `ast`, or carry code that costs seconds to read. `row` turns it into the fields the store
takes (valid UTF-8 always) with a status and a one-line reason of at most 200 characters (it may
quote the code) when it is not code worth a sandbox run; nothing in it raises (docs/real-loop.md,
"Hostile text reaches the store …").
"""

from __future__ import annotations

from archrefine.code.code import CodeError, extract_code, static_check
from archrefine.code.fingerprint import fingerprint
from archrefine.real.guard import contained, describe
from archrefine.sandbox.sandbox import one_line

MAX_RESPONSE = 1_000_000  # characters of one response kept; a longer one is rejected
MAX_CODE = (200_000, 5_000)  # characters, lines of extracted code; reading more costs seconds


def code_or_error(response: object) -> tuple[str | None, str]:
    """The code in `response` and "", or None and why there is none; never raises, and never
    reads more than `MAX_RESPONSE` characters (the loop asks this of every reply, before `row`,
    to decide which to resample: a server may send 30 MB of valid Python)."""
    if isinstance(response, str) and len(response) > MAX_RESPONSE:
        return None, f"a response of {len(response):,} characters (limit {MAX_RESPONSE:,})"
    try:
        return extract_code(response, max_unfenced=MAX_CODE[0]), ""  # type: ignore[arg-type]
    except CodeError as err:
        return None, str(err)
    except Exception as err:  # noqa: BLE001 - e.g. RecursionError on a hostile reply
        return None, f"no readable code ({describe(err)})"


def row(c: int, prompt: str, response: object, parents: list[int]) -> dict:
    """The stored row of one response; parsing it cannot raise (a hostile reply, e.g. code
    nested too deeply for `ast`, makes that candidate `crashed`)."""
    if not isinstance(response, str):
        return dict(cycle=c, prompt=prompt, response=None, parent_ids=parents,
                    status="no_code", reason="the generator returned no text")  # fmt: skip
    response = storable(response)
    if len(response) > MAX_RESPONSE:
        why = f"rejected: a response of {len(response):,} characters (limit {MAX_RESPONSE:,})"
        return dict(cycle=c, prompt=prompt, response=response[:MAX_RESPONSE],
                    parent_ids=parents, status="rejected", reason=why)  # fmt: skip
    fields = dict(cycle=c, prompt=prompt, response=response, parent_ids=parents)
    parsed = contained("parsing the response", lambda: _parsed(response))
    if parsed.get("reason"):  # it may quote the code: `import <a 190,000-character name>`
        parsed["reason"] = one_line(parsed["reason"])
    return fields | parsed


def storable(text: str) -> str:
    """`text` as valid UTF-8: a lone surrogate (JSON can carry `\\ud800`) becomes the escape
    `\\ud800` as text. SQLite, JSON and the sandbox's pipe refuse such strings, and a stored
    one would reach every later prompt that shows it as a reference."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def too_long(code: str) -> bool:
    """Whether `code` is past `MAX_CODE`: stored (rejected), but never read, here or later (a
    1 MB block cost ~14 s and 750 MB each time the archive took it in)."""
    return len(code) > MAX_CODE[0] or code.count("\n") + 1 > MAX_CODE[1]


def _parsed(response: str) -> dict:
    code, error = code_or_error(response)
    if code is None:
        return dict(status="no_code", reason=error)
    if too_long(code):
        lines = code.count("\n") + 1
        why = f"the code has {len(code):,} characters in {lines:,} lines (limit {MAX_CODE[0]:,}"
        return dict(code=code, status="rejected", reason=f"{why} in {MAX_CODE[1]:,})")
    problems = static_check(code)
    if problems:
        return dict(code=code, status="rejected", reason=problems[0])
    try:
        return dict(code=code, fingerprint=fingerprint(code).sha1)
    except CodeError as err:  # e.g. too intricate to read: loops nested to a million passes
        return dict(code=code, status="rejected", reason=str(err))
