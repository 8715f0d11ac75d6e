"""An OpenAI-compatible HTTP server over any `TextGenerator`, on the standard library alone.

Two uses: tests drive the `openai` backend against a real server on loopback, and a local
model (`hf`, `learned`) can be served to any tool that speaks the OpenAI API. It implements
what such clients need and no more: `GET /v1/models`, `POST /v1/chat/completions`,
`POST /v1/completions`, no streaming. Requests are handled in threads, but generator calls
are serialised by one lock: generators hold one model and one RNG and are not thread-safe.
Besides the standard fields a request may carry `top_k` and `rate` (the schedule's mutation
rate, which the learned generator reads and LLM backends ignore).
"""

from __future__ import annotations

import contextlib
import errno
import json
import secrets
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from archrefine.core.config import ConfigError
from archrefine.real.text import Sampling, TextGenerator
from archrefine.sandbox.sandbox import one_line

__all__ = ["GeneratorServer", "ServeError", "check_address"]


class ServeError(ConfigError):
    """The server cannot listen where asked (port in use or out of range, unknown host): one
    line naming the address and what to do, never the socket's traceback."""


def check_address(host: str, port: int) -> None:
    """Raise `ServeError` now if a server could not listen at `host:port`, so a caller that
    builds a model first (the CLI's `serve`) learns of a busy port before spending time on it."""
    _listen(host, port).server_close()


def _listen(host: str, port: int) -> ThreadingHTTPServer:
    """Bind and listen, turning the socket's errors into a `ServeError`."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ServeError(f"port {port!r} is not a port number (0–65535; 0: any free one)")
    try:
        return ThreadingHTTPServer((host, port), _Handler)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise ServeError(
                f"{host}:{port} is in use (another server?): choose another --port, or --port 0 "
                "for any free one"
            ) from None
        raise ServeError(
            f"cannot listen on {host}:{port}: {one_line(err.strerror or err)}"
        ) from None


class _BadRequest(ValueError):
    """A request answered with 400; the message goes back to the client."""


def _field(body: dict, keys: tuple[str, ...], default: Any, kind: type = float, low=None) -> Any:
    """The first of `keys` present in `body`, checked to be a `kind` (bools refused)."""
    key = next((k for k in keys if body.get(k) is not None), None)
    if key is None:
        return default
    value = body[key]
    ok = isinstance(value, int) if kind is int else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise _BadRequest(f"'{key}' must be {'an integer' if kind is int else 'a number'}")
    if low is not None and value < low:
        raise _BadRequest(f"'{key}' must be at least {low}")
    return kind(value)


def _sampling(body: dict) -> tuple[Sampling, int, int]:
    """Sampling, seed (random when absent, as in the OpenAI API) and n of a request."""
    if body.get("stream"):
        raise _BadRequest("streaming is not supported")
    d = Sampling()
    sampling = Sampling(
        temperature=_field(body, ("temperature",), d.temperature, low=0),
        top_p=_field(body, ("top_p",), d.top_p, low=0),
        top_k=_field(body, ("top_k",), d.top_k, int),
        max_new_tokens=_field(
            body, ("max_tokens", "max_completion_tokens"), d.max_new_tokens, int, low=1
        ),
        rate=_field(body, ("rate",), d.rate),
    )
    seed = _field(body, ("seed",), secrets.randbelow(2**31), int)
    return sampling, seed, _field(body, ("n",), 1, int, low=1)


def _chat_prompt(body: dict) -> str:
    """The messages' contents joined: a `TextGenerator` takes one prompt, no roles."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty list")
    parts = []
    for message in messages:
        if not isinstance(message, dict):
            raise _BadRequest("each message must be an object")
        content = message.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if content is None:  # e.g. an assistant turn that only called tools
            continue
        if not isinstance(content, str):
            raise _BadRequest("a message's 'content' must be text")
        parts.append(content)
    return "\n\n".join(parts)


def _prompts(body: dict) -> list[str]:
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise _BadRequest("'prompt' must be a string or a non-empty list of strings")
    return prompts


def _tokens(text: str) -> int:
    return len(text.split())  # an approximation: there is no tokenizer here


class GeneratorServer:
    """Serve `generator` at `url` (`port=0` picks a free port); `start`/`stop` or `with`."""

    def __init__(
        self,
        generator: TextGenerator,
        *,
        model_name: str = "archrefine",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.generator = generator
        self.model_name = model_name
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._httpd = _listen(host, port)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self.connections: set[socket.socket] = set()  # open keep-alive connections

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> GeneratorServer:
        """Serve in a daemon thread and return at once."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting requests, close the socket and every kept-alive connection (a stopped
        server must look down to its clients; requests in flight are abandoned)."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()
        for conn in list(self.connections):  # not under the generator lock: that may be busy
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def serve_forever(self) -> None:
        """Serve in this thread until Ctrl-C (the CLI's `serve`)."""
        try:
            self._httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self._httpd.server_close()

    def __enter__(self) -> GeneratorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def models(self) -> dict:
        model = {"id": self.model_name, "object": "model", "created": 0, "owned_by": "archrefine"}
        return {"object": "list", "data": [model]}

    def complete(self, body: dict, *, chat: bool) -> dict:
        """One generate call for all `len(prompts) · n` completions, prompt-major as OpenAI."""
        prompts = [_chat_prompt(body)] if chat else _prompts(body)
        sampling, seed, n = _sampling(body)
        batch = [p for p in prompts for _ in range(n)]
        with self._lock:
            texts = list(self.generator.generate(batch, sampling, seed))
        if len(texts) != len(batch):
            raise RuntimeError(f"the generator returned {len(texts)} texts for {len(batch)}")
        choices: list[dict[str, Any]] = []
        for i, text in enumerate(texts):
            out = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            choices.append({"index": i, **out, "logprobs": None, "finish_reason": "stop"})
        prompt_tokens = sum(_tokens(p) for p in prompts)
        completion_tokens = sum(_tokens(t) for t in texts)
        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the openai client reuses connections

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet by default: tests and the loop's console stay readable

    def setup(self) -> None:
        super().setup()
        self.server.owner.connections.add(self.connection)  # type: ignore[attr-defined]

    def finish(self) -> None:
        self.server.owner.connections.discard(self.connection)  # type: ignore[attr-defined]
        super().finish()

    def do_GET(self) -> None:
        if self._route() == "/v1/models":
            self._send(200, self.server.owner.models())  # type: ignore[attr-defined]
        else:
            self._error(404, f"no route GET {self.path}", "not_found_error")

    def do_POST(self) -> None:
        owner: GeneratorServer = self.server.owner  # type: ignore[attr-defined]
        route = self._route()
        chat = {"/v1/chat/completions": True, "/v1/completions": False}.get(route)
        try:
            body = self._body()  # read even for a 404: the connection stays usable
            if chat is None:
                self._error(404, f"no route POST {self.path}", "not_found_error")
                return
            answer = owner.complete(body, chat=chat)
        except _BadRequest as e:
            self._error(400, str(e), "invalid_request_error")
            return
        except Exception as e:  # the generator failed: one line, the client may retry
            self._error(500, one_line(f"{type(e).__name__}: {e}"), "server_error")
            return
        self._send(200, answer)

    def _route(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/")

    def _body(self) -> dict:
        try:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.loads(raw)
        except ValueError as e:  # bad length, bad UTF-8, bad JSON
            raise _BadRequest(f"the request body is not valid JSON ({one_line(e)})") from e
        if not isinstance(body, dict):
            raise _BadRequest("the request body must be a JSON object")
        return body

    def _error(self, status: int, message: str, kind: str) -> None:
        self._send(status, {"error": {"message": message, "type": kind, "code": None}})

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
            self.close_connection = True
