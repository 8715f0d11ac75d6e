"""An HTTP client for the `openai` generator that bounds what a server can make it do.

The official client's timeout applies to each socket read, so a server that sends one byte a
second (headers or body) holds a request forever, and it reads and decompresses whatever size
arrives (a 100 MB reply, or a gzip bomb that inflates to gigabytes). This transport gives every
request a deadline for the whole exchange (connect, headers, body), reads at most `max_bytes`
of body after decompression, asks for uncompressed replies and inflates only gzip/deflate
itself (with the same cap), refuses a body holding more JSON values than any reply needs (the
client parses them all, and builds a typed object per `choices` entry: a few MB of `{},` cost
it seconds and gigabytes, after the deadline), caps a server's `Retry-After` at the deadline
(the client honours up to two minutes a retry), and never follows a redirect to a server the
config did not name.
Its errors are the client's own transport errors, so the client retries them as it retries a
dropped connection, and `OpenAIGenerator` reports the last one in one line.
"""

from __future__ import annotations

import email.utils
import importlib
import math
import re
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import openai

# the HTTP library the installed openai client is built on (httpx, or httpx2 in newer releases;
# their APIs are the same), and its transport layer (httpcore / httpcore2)
_NAME = next(
    c.__module__.split(".")[0]
    for c in openai.DefaultHttpxClient.__mro__
    if c.__module__.split(".")[0] in ("httpx", "httpx2")
)
httpx: Any = importlib.import_module(_NAME)
httpcore: Any = importlib.import_module(_NAME.replace("httpx", "httpcore"))

__all__ = [
    "MAX_JSON_VALUES",
    "MAX_REPLY_BYTES",
    "ReplyTooLarge",
    "bounded_client",
    "httpx",
    "requests_sent",
]

MAX_REPLY_BYTES = 32 * 2**20  # a 32k-token completion is well under 1 MB of JSON
MAX_JSON_VALUES = 100_000  # a completion holds a few dozen, a list of hundreds of models thousands
# one JSON string, escapes included (an unterminated one runs to the end). Linear without
# possessive quantifiers (Python 3.11+): the greedy loop stops only at a quote, the end, or a
# backslash at the end, and the tail matches each of those at once, so nothing backtracks
_JSON_STRING = re.compile(rb'"(?:[^"\\]+|\\.)*(?:"|\\?\Z)', re.S)
_deadline = threading.local()  # the current request's end, per thread (requests are sync)
_sent = threading.local()  # requests this thread has sent through a bounded client


def requests_sent() -> int:
    """How many requests this thread has sent through any bounded client (a sync client sends
    from the calling thread): the difference over a call is what the call cost, retries
    included."""
    return getattr(_sent, "n", 0)


class ReplyTooLarge(httpx.ReadError):
    """The server's reply (after decompression) is larger than the cap."""


def bounded_client(
    timeout_s: float, max_bytes: int = MAX_REPLY_BYTES, max_values: int = MAX_JSON_VALUES
) -> httpx.Client:
    """An `httpx.Client` for `openai.OpenAI(http_client=...)`: each request ends within
    `timeout_s` (a `ReadTimeout` otherwise), replies are capped at `max_bytes` and at
    `max_values` JSON values, a server's pause before a retry at `timeout_s`."""
    return httpx.Client(
        transport=_BoundedTransport(timeout_s, max_bytes, max_values),
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=False,
        headers={"Accept-Encoding": "identity"},
    )


class _BoundedTransport(httpx.HTTPTransport):
    def __init__(self, timeout_s: float, max_bytes: int, max_values: int) -> None:
        super().__init__()
        self.timeout_s, self.max_bytes = float(timeout_s), int(max_bytes)
        self.max_values = int(max_values)
        pool = getattr(self, "_pool", None)
        if pool is None or not hasattr(pool, "_network_backend"):  # pragma: no cover
            raise RuntimeError(f"{_NAME} has changed its transport: cannot bound request time")
        # httpcore's own attribute (third-party, not archrefine's): httpx.HTTPTransport has no
        # public way to pass httpcore.ConnectionPool a network_backend
        pool._network_backend = _DeadlineBackend(pool._network_backend)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        _sent.n = requests_sent() + 1
        _deadline.at = time.monotonic() + self.timeout_s
        _deadline.limit = self.timeout_s
        response = super().handle_request(request)
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", "x-gzip", "deflate", ""):
            response.close()
            raise httpx.DecodingError(f"the reply is {encoding}-encoded (asked for identity)")
        dropped = ("content-encoding", "content-length", "retry-after", "retry-after-ms")
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in dropped]
        headers += _retry_after(response.headers, self.timeout_s)
        return httpx.Response(
            response.status_code,
            headers=headers,
            stream=_CappedStream(response, encoding, self.max_bytes, self.max_values),
            extensions=response.extensions,
        )


def _retry_after(headers: Any, cap_s: float) -> list[tuple[str, str]]:
    """The pause a server asks for before a retry (`Retry-After-Ms`, else `Retry-After` in
    seconds or as a date, as the client reads them) as one `Retry-After` of at most `cap_s`:
    the client would honour up to 120 s a retry, whatever `timeout_s` says."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            if scale != 1.0:
                continue
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError, OverflowError, IndexError):
                return []
        if math.isnan(seconds):
            return []  # the client's own backoff, as for an unreadable header
        return [("Retry-After", f"{min(max(seconds, 0.0), cap_s):.3f}")]
    return []


class _CappedStream(httpx.SyncByteStream):
    """The body, inflated here when gzip/deflate, ending in ReplyTooLarge past the cap on bytes
    or on JSON values; whole, once both are checked (nothing is parsed before)."""

    def __init__(
        self, response: httpx.Response, encoding: str, max_bytes: int, max_values: int
    ) -> None:
        self.response, self.max_bytes, self.max_values = response, max_bytes, max_values
        wbits = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 0}
        self.inflate = zlib.decompressobj(wbits[encoding]) if encoding in wbits else None

    def __iter__(self) -> Iterator[bytes]:
        body = b"".join(self._chunks())
        if (
            _values(body) > self.max_values
            and _values(_JSON_STRING.sub(b"", body)) > self.max_values
        ):
            raise ReplyTooLarge(f"the reply holds more than {self.max_values:,} JSON values")
        yield body

    def _chunks(self) -> Iterator[bytes]:
        size = 0
        for raw in self.response.stream:
            chunks = [raw]
            if self.inflate is not None:
                try:  # never inflate more than the cap allows, whatever the ratio
                    chunks = [self.inflate.decompress(raw, self.max_bytes - size + 1)]
                except zlib.error as err:
                    raise httpx.DecodingError(f"the compressed reply is broken ({err})") from None
            for chunk in chunks:
                size += len(chunk)
                if size > self.max_bytes:
                    raise ReplyTooLarge(f"the reply is larger than {self.max_bytes:,} bytes")
                yield chunk
        if self.inflate is not None and (rest := self.inflate.flush(self.max_bytes - size + 1)):
            if size + len(rest) > self.max_bytes:
                raise ReplyTooLarge(f"the reply is larger than {self.max_bytes:,} bytes")
            yield rest

    def close(self) -> None:
        self.response.close()


def _values(body: bytes) -> int:
    """JSON arrays, objects and elements after a first (`[`, `{`, `,`): what parsing builds.
    Counted in the whole body first (fast), outside strings only when that is over the cap."""
    return body.count(b"[") + body.count(b"{") + body.count(b",")


class _DeadlineBackend(httpcore.NetworkBackend):
    """The default backend, with every read and write bounded by the request's deadline."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        stream = self.inner.connect_tcp(host, port, _left(timeout), local_address, socket_options)
        return _DeadlineStream(stream)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return _DeadlineStream(self.inner.connect_unix_socket(path, _left(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, _left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, _left(timeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        return _DeadlineStream(self.inner.start_tls(ssl_context, server_hostname, _left(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


def _left(timeout: float | None) -> float | None:
    """The smaller of the per-operation timeout and what is left of the request's deadline."""
    end = getattr(_deadline, "at", None)
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout(f"the reply took longer than {_deadline.limit:g} s in all")
    return left if timeout is None else min(timeout, left)
