"""The `openai` generator against hostile or broken servers (a loopback http.server per test):
replies that never end, that are too large or compressed into bombs, that reset, redirect,
answer for another model or in shapes a completion never has; a server that goes away and
comes back. Each ends in one line naming the server (after the client's retries), or in a
usable answer when the fault was passing (docs/real-loop.md, "Server faults")."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread

import pytest

pytest.importorskip("openai")

from archrefine.real.openai_api import OpenAIGenerator  # noqa: E402
from archrefine.real.text import GeneratorUnavailable, Sampling  # noqa: E402

Handler = Callable[[BaseHTTPRequestHandler, int], None]  # (request, POST number from 1)


def chat(content: object = "```python\nx = 1\n```", model: str = "m", **choice) -> bytes:
    first = {"index": 0, "message": {"role": "assistant", "content": content},
             "finish_reason": "stop", **choice}  # fmt: skip
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": model,
                       "choices": [first]}).encode()  # fmt: skip


def send(h: BaseHTTPRequestHandler, body: bytes, code: int = 200, **headers: str) -> None:
    h.send_response(code)
    h.send_header("Content-Type", "application/json")
    for k, v in headers.items():
        h.send_header(k.replace("_", "-"), v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


MODELS = json.dumps({"object": "list", "data": [{"id": "m"}]}).encode()


class Server:
    """Answers GET /v1/models with `models` (model "m") and each POST with `on_post(handler,
    n)`; counts the POSTs."""

    def __init__(self, on_post: Handler, port: int = 0, models: bytes = MODELS) -> None:
        self.posts = 0
        server = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                with contextlib.suppress(OSError):  # the client gave up on the list
                    send(self, models)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.posts += 1
                with contextlib.suppress(OSError):  # the client gave up on an endless reply
                    on_post(self, server.posts)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def generator(url: str, **kw) -> OpenAIGenerator:
    return OpenAIGenerator(**{"model": "m", "base_url": url, "timeout_s": 5, "max_retries": 1,
                              **kw})  # fmt: skip


def ask(url: str, **kw) -> list[str]:
    gen = generator(url, **kw)
    try:
        return gen.generate(["a"], Sampling(), 0)
    finally:
        gen.close()


def drip_body(h, n):
    h.send_response(200)
    h.send_header("Content-Length", "100000")
    h.end_headers()
    for _ in range(200):
        h.wfile.write(b" ")
        h.wfile.flush()
        time.sleep(0.1)


def drip_headers(h, n):
    h.wfile.write(b"HTTP/1.1 200 OK\r\n")
    for _ in range(200):
        h.wfile.write(b"X-Slow: 1\r\n")
        h.wfile.flush()
        time.sleep(0.1)


def silent(h, n):
    time.sleep(20)


def bomb(h, n):
    squeeze = zlib.compressobj(9, wbits=16 + zlib.MAX_WBITS)
    zeros = b" " * 2**20
    body = b"".join(squeeze.compress(zeros) for _ in range(64)) + squeeze.flush()
    send(h, body, Content_Encoding="gzip")  # 64 MB of spaces in ~64 KB


@pytest.mark.parametrize(
    "on_post, message",
    [
        (drip_body, r"did not answer within 0.5 s"),
        (drip_headers, r"did not answer within 0.5 s"),
        (silent, r"did not answer within 0.5 s"),
        (lambda h, n: send(h, chat("x" * 40_000_000)), "larger than 33,554,432 bytes"),
        (bomb, "larger than 33,554,432 bytes"),
        (lambda h, n: send(h, b"\x00" * 10, Content_Encoding="br"), "br-encoded"),
        (lambda h, n: send(h, b"garbage", Content_Encoding="gzip"), "compressed reply is broken"),
        (lambda h, n: send(h, b"", 307, Location="http://127.0.0.1:9/v1"), "HTTP 307"),
        (lambda h, n: send(h, b'{"error": "slow down"}', 429, Retry_After="0"), "HTTP 429"),
        (lambda h, n: send(h, b'{"choices": [{"message": "hi"}]}'), "message is a str"),
        (lambda h, n: send(h, chat(42)), "no text"),
        (lambda h, n: send(h, chat({"text": "x"})), "no text"),
        (lambda h, n: send(h, chat(None, finish_reason="content_filter")), "no text"),
        (lambda h, n: send(h, b'{"choices": [{"message": {"content": "\xff\xfe"}}]}'), "JSON"),
        (lambda h, n: send(h, b"[" + b"1," * 10 + b"1]"), "a list"),
        (lambda h, n: send(h, b'"a string"'), "a str"),
        (lambda h, n: send(h, b"null"), "a NoneType"),
        (lambda h, n: send(h, chat(model="evil-7b")), "answered for model 'evil-7b', not 'm'"),
    ],
    ids=[
        "drip-body",
        "drip-headers",
        "silent",
        "huge",
        "gzip-bomb",
        "brotli",
        "bad-gzip",
        "redirect",
        "429",
        "message-str",
        "content-number",
        "content-dict",
        "content-filter",
        "invalid-utf8",
        "json-array",
        "json-string",
        "json-null",
        "other-model",
    ],  # fmt: skip
)
def test_a_hostile_server_ends_in_one_line_within_its_limits(on_post, message) -> None:
    timeout = 0.5 if "did not answer" in message else 5.0
    with Server(on_post) as server:
        start = time.monotonic()
        with pytest.raises(GeneratorUnavailable, match=message) as info:
            ask(server.url, timeout_s=timeout)
        took = time.monotonic() - start
    text = str(info.value)
    assert "\n" not in text and server.url in text and len(text) < 400
    assert took < 2 * timeout + 3  # two tries of at most `timeout` each, plus backoff


@pytest.mark.parametrize(
    "on_post",
    [
        lambda h, n: send(h, b"{}", 429, Retry_After="1") if n == 1 else send(h, chat()),
        lambda h, n: send(h, b"{}", 503) if n == 1 else send(h, chat()),
        lambda h, n: _reset_mid_body(h) if n == 1 else send(h, chat()),
        lambda h, n: send(h, gzip.compress(chat()), Content_Encoding="gzip"),
        lambda h, n: send(h, chat([{"type": "text", "text": "```python\nx = 1\n```"}])),
        lambda h, n: send(h, chat(model="M-2024-08-06")),
    ],
    ids=["429-retry-after", "503-once", "reset-once", "gzip", "content-parts", "dated-model"],
)
def test_a_passing_fault_or_a_variant_format_still_gives_the_answer(on_post) -> None:
    with Server(on_post) as server:
        assert ask(server.url) == ["```python\nx = 1\n```"]


def _reset_mid_body(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Length", "1000")
    h.end_headers()
    h.wfile.write(b'{"choices": [')
    h.wfile.flush()
    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    h.connection.shutdown(socket.SHUT_RDWR)


def test_a_server_that_goes_away_and_comes_back() -> None:
    answer: Handler = lambda h, n: send(h, chat(), Connection="close")  # noqa: E731
    with Server(answer) as first:
        gen = generator(first.url, max_retries=0)
        assert gen.generate(["a"], Sampling(), 0) == ["```python\nx = 1\n```"]
        port = first.port
    try:
        with pytest.raises(GeneratorUnavailable, match="cannot reach") as info:
            gen.generate(["b"], Sampling(), 0)
        assert "\n" not in str(info.value)
        with Server(answer, port=port):
            assert gen.generate(["c"], Sampling(), 0) == ["```python\nx = 1\n```"]
    finally:
        gen.close()
