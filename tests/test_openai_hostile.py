"""The `openai` generator against more hostile loopback servers than test_openai_faults.py: a
reply of a few hundred KB holding hundreds of thousands of JSON values (the client would parse
them all and build a typed object per choice: seconds and gigabytes, after the deadline), a
`Retry-After` far beyond `timeout_s` (the client would wait up to 120 s a retry), a model list
whose first id is not a name, redirects of every kind to another server, and bodies or status
lines that never end. Each ends in one line naming the server, within its limits."""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

import pytest

pytest.importorskip("openai")

from test_openai_faults import Server, chat, send  # noqa: E402

from archrefine.real.http_limits import MAX_JSON_VALUES  # noqa: E402
from archrefine.real.openai_api import OpenAIGenerator  # noqa: E402
from archrefine.real.text import GeneratorUnavailable, Sampling  # noqa: E402

Reply = Callable[[BaseHTTPRequestHandler, int], None]  # (request, POST number from 1)
ANSWER = "```python\nx = 1\n```"


def within(seconds: float, fn: Callable[[], object]) -> object:
    """`fn()`'s result or exception, failing the test if it takes over `seconds` (the call is
    left behind in a daemon thread, so a regression fails fast instead of hanging the suite)."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    worker = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s"
    box["took"] = time.monotonic() - start
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]


def ask(url: str, *, model: str = "m", timeout_s: float = 2.0, max_retries: int = 1) -> list:
    gen = OpenAIGenerator(model, base_url=url, timeout_s=timeout_s, max_retries=max_retries)
    try:
        return gen.generate(["a"], Sampling(), 0)
    finally:
        gen.close()


def one_line_naming(info: pytest.ExceptionInfo, url: str) -> None:
    text = str(info.value)
    assert "\n" not in text and url in text and len(text) < 400


def many_values(n: int) -> bytes:
    return b'{"model": "m", "choices": [' + b",".join([b"{}"] * n) + b"]}"


@pytest.mark.parametrize(
    "on_post",
    [
        lambda h, n: send(h, many_values(MAX_JSON_VALUES + 50_000)),  # 450 KB: ~3 s, 200 MB
        lambda h, n: send(h, chat()[:-1] + b', "x": [' + b"1," * 300_000 + b"1]}"),
        lambda h, n: send(h, b'{"error": [' + b"{}," * 300_000 + b"{}]}", 400),
    ],
    ids=["150k-choices", "300k-numbers", "300k-in-an-error"],
)
def test_a_reply_of_too_many_json_values_is_refused_before_parsing(on_post) -> None:
    with Server(on_post) as server:
        with pytest.raises(GeneratorUnavailable, match="more than 100,000 JSON values") as info:
            within(5, lambda: ask(server.url))
        one_line_naming(info, server.url)


def test_commas_and_brackets_inside_strings_are_not_values() -> None:
    code = "```python\nx = [" + ",".join(["{[]}"] * 300_000) + "]\n```"  # 1.5 MB of text
    with Server(lambda h, n: send(h, chat(code))) as server:
        assert within(5, lambda: ask(server.url)) == [code]


def test_a_model_list_of_too_many_values_is_one_line() -> None:
    models = b'{"object": "list", "data": [' + b",".join([b'{"id": "m"}'] * 150_000) + b"]}"
    with Server(lambda h, n: send(h, chat()), models=models) as server:
        with pytest.raises(GeneratorUnavailable, match="more than 100,000 JSON values") as info:
            within(5, lambda: ask(server.url, model=""))
        one_line_naming(info, server.url)


def _date_in(seconds: float) -> str:
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


@pytest.mark.parametrize(
    "headers",
    [
        {"Retry-After": "120"},
        {"Retry-After-Ms": "100000"},
        {"Retry-After": _date_in(110)},
        {"Retry-After": "1e999"},
    ],
    ids=["seconds", "milliseconds", "date", "overflow"],
)
def test_retry_after_is_honoured_only_up_to_the_timeout(headers) -> None:
    slow_down: Reply = lambda h, n: send(h, b'{"error": "slow down"}', 429, **headers)  # noqa: E731
    with Server(slow_down) as server:
        start = time.monotonic()
        with pytest.raises(GeneratorUnavailable, match="HTTP 429") as info:
            within(8, lambda: ask(server.url, timeout_s=0.5))
        assert server.posts == 2  # retried once, after at most 0.5 s
        assert time.monotonic() - start < 4
        one_line_naming(info, server.url)


def test_a_short_retry_after_is_still_honoured() -> None:
    def once(h, n):
        send(h, b"{}", 429, Retry_After="0.6") if n == 1 else send(h, chat())

    with Server(once) as server:
        start = time.monotonic()
        assert within(8, lambda: ask(server.url)) == [ANSWER]
        assert time.monotonic() - start >= 0.5 and server.posts == 2


def _models(first: object) -> bytes:
    return json.dumps({"object": "list", "data": [{"id": first}, {"id": "m"}]}).encode()


@pytest.mark.parametrize(
    "first, what",
    [
        (123, "int"),
        (None, "NoneType"),
        ("", "0 characters"),
        ({"a": 1}, "dict"),
        ("m" * 100_000, "100,000 characters"),
        ("m\n\x1b[2J", "6 characters"),
    ],
    ids=["int", "null", "empty", "object", "100k-long", "control-characters"],
)
def test_a_listed_model_id_that_is_not_a_name_is_refused_at_start(first, what) -> None:
    with Server(lambda h, n: send(h, chat()), models=_models(first)) as server:
        with pytest.raises(GeneratorUnavailable, match=f"not a name \\({what}\\)") as info:
            within(5, lambda: ask(server.url, model=""))
        assert server.posts == 0  # nothing was asked of a model with no name
        one_line_naming(info, server.url)


@pytest.mark.parametrize("code", [301, 302, 303, 308])
def test_no_redirect_is_followed_to_another_server(code) -> None:
    with Server(lambda h, n: send(h, chat())) as elsewhere:
        moved: Reply = lambda h, n: send(h, b"", code, Location=elsewhere.url + "/chat/completions")  # noqa: E731
        with Server(moved) as server:
            with pytest.raises(GeneratorUnavailable, match=f"HTTP {code}") as info:
                within(5, lambda: ask(server.url))
            one_line_naming(info, server.url)
        assert elsewhere.posts == 0


def _endless_chunks(h: BaseHTTPRequestHandler, n: int) -> None:
    h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    h.wfile.write(b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
    while True:
        h.wfile.write(chunk)


def _endless_continue(h: BaseHTTPRequestHandler, n: int) -> None:
    while True:
        h.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n" * 100)
        h.wfile.flush()
        time.sleep(0.01)


@pytest.mark.parametrize(
    "on_post, timeout_s, message",
    [
        (_endless_chunks, 5.0, "larger than 33,554,432 bytes"),
        (_endless_continue, 0.5, "within 0.5 s"),
    ],
    ids=["endless-chunked-body", "endless-100-continue"],
)
def test_a_reply_that_never_ends_is_cut_off(on_post, timeout_s, message) -> None:
    with Server(on_post) as server:
        with pytest.raises(GeneratorUnavailable, match=message) as info:
            within(2 * timeout_s + 3, lambda: ask(server.url, timeout_s=timeout_s))
        one_line_naming(info, server.url)


def _unavailable_then_html(h: BaseHTTPRequestHandler, n: int) -> None:
    """Odd requests an HTTP 503 the client retries itself, even ones a 200 HTML page that only
    the generator re-asks: a server failing both ways, which once cost (retries + 1)²."""
    if n % 2:
        send(h, b'{"error": {"message": "busy"}}', 503)
    else:
        send(h, b"<html>oops</html>")


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_transport_retries_and_re_asks_share_one_budget_per_prompt(max_retries) -> None:
    with Server(_unavailable_then_html) as server:
        with pytest.raises(GeneratorUnavailable, match="HTTP 503|unusable answer") as err:
            within(30, lambda: ask(server.url, max_retries=max_retries))
        assert server.posts <= max_retries + 1
    assert "\n" not in str(err.value)


def test_a_passing_fault_on_the_re_ask_still_gives_the_answer() -> None:
    """The shared budget still lets a 503 be retried after an unusable answer."""

    def reply(h: BaseHTTPRequestHandler, n: int) -> None:
        if n == 1:
            send(h, b"<html>oops</html>")
        elif n == 2:
            send(h, b'{"error": {"message": "busy"}}', 503)
        else:
            send(h, chat(ANSWER))

    with Server(reply) as server:
        assert within(30, lambda: ask(server.url, max_retries=2)) == [ANSWER]
        assert server.posts == 3
