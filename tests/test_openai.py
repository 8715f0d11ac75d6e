"""The `openai` generator against a real OpenAI-compatible server (`serve.GeneratorServer`) on
loopback: both APIs, order, seeds, sampling fields, errors as one-line GeneratorUnavailable,
the client's retries, save/load, model discovery; one end-to-end test with the learned model."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("openai")

from archrefine.real.openai_api import OpenAIGenerator  # noqa: E402
from archrefine.real.serve import GeneratorServer  # noqa: E402
from archrefine.real.text import GeneratorUnavailable, Sampling, TextGenerator  # noqa: E402


class Echo:
    """Deterministic fake: each text names its prompt, seed (`seed + i`) and sampling fields.
    `delay` seconds per call; the first `fail` calls raise."""

    def __init__(self, delay: float = 0.0, fail: int = 0) -> None:
        self.delay, self.fail, self.calls = delay, fail, []

    def generate(self, prompts, sampling: Sampling, seed: int) -> list[str]:
        self.calls.append((list(prompts), sampling, seed))
        if self.fail:
            self.fail -= 1
            raise RuntimeError("boom\nsecond line")
        time.sleep(self.delay)
        s = sampling
        return [
            f"{p}|seed={seed + i}|k={s.top_k}|t={s.temperature}|p={s.top_p}|m={s.max_new_tokens}"
            for i, p in enumerate(prompts)
        ]

    def refine(self, pairs, cycle):
        return None

    def save(self, directory: Path) -> None:
        pass

    def load(self, directory: Path) -> None:
        pass

    def close(self) -> None:
        pass


_OPEN: list[OpenAIGenerator] = []


@pytest.fixture(autouse=True)
def _close_clients():
    yield
    while _OPEN:
        _OPEN.pop().close()


@pytest.fixture
def echo():
    fake = Echo()
    with GeneratorServer(fake, model_name="echo-1") as server:
        yield fake, server


def _client(server: GeneratorServer | None = None, **kw) -> OpenAIGenerator:
    """A generator closed after the test; against `server` unless `base_url` is given."""
    defaults = {"model": "echo-1", "timeout_s": 5, "max_retries": 0}
    if server is not None:
        defaults["base_url"] = server.url
    _OPEN.append(OpenAIGenerator(**{**defaults, **kw}))
    return _OPEN[-1]


def _post(url: str, data: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_both_apis_in_order_with_sampling(echo, api):
    fake, server = echo
    gen = _client(server, api=api, concurrency=4)
    assert isinstance(gen, TextGenerator)
    prompts = [f"prompt {i}" for i in range(10)]
    sampling = Sampling(temperature=0.3, top_p=0.7, top_k=7, max_new_tokens=33)
    out = gen.generate(prompts, sampling, seed=100)
    assert out == [f"prompt {i}|seed={100 + i}|k=7|t=0.3|p=0.7|m=33" for i in range(10)]
    assert len(fake.calls) == 10 and all(len(p) == 1 for p, _, _ in fake.calls)
    assert gen.generate([], sampling, 0) == []


def test_system_message_and_seed_determinism(echo):
    _, server = echo
    gen = _client(server, system="You design networks.")
    a = gen.generate(["x", "x", "x"], Sampling(), seed=5)
    assert a == gen.generate(["x", "x", "x"], Sampling(), seed=5)
    assert a != gen.generate(["x", "x", "x"], Sampling(), seed=6)
    assert a[0].startswith("You design networks.\n\nx|seed=5")


def test_env_fallbacks_and_model_discovery(echo, monkeypatch):
    _, server = echo
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    gen = _client(model="")
    assert gen.model == "echo-1" and gen.base_url == server.url
    monkeypatch.setenv("OPENAI_MODEL", "named")
    assert _client(model="").model == "named"


def test_server_n_and_list_prompts(echo):
    fake, server = echo
    body = {"model": "any", "messages": [{"role": "user", "content": "hi"}], "n": 3, "seed": 1}
    status, answer = _post(server.url + "/chat/completions", json.dumps(body).encode())
    assert status == 200 and answer["object"] == "chat.completion"
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2]
    content = "hi|seed=3|k=50|t=0.8|p=0.95|m=1024"
    assert answer["choices"][2]["message"] == {"role": "assistant", "content": content}
    assert len(fake.calls) == 1 and fake.calls[0][0] == ["hi"] * 3
    assert answer["usage"]["prompt_tokens"] == 1
    body = {"model": "any", "prompt": ["a b", "c"], "n": 2, "seed": 0, "top_k": 3}
    status, answer = _post(server.url + "/completions", json.dumps(body).encode())
    assert status == 200 and answer["object"] == "text_completion"
    assert [c["text"].split("|")[0] for c in answer["choices"]] == ["a b", "a b", "c", "c"]
    assert fake.calls[-1][1].top_k == 3 and answer["usage"]["prompt_tokens"] == 3


@pytest.mark.parametrize(
    ("path", "data", "status"),
    [
        ("/chat/completions", b"{not json", 400),
        ("/chat/completions", b'{"model": "m"}', 400),
        ("/chat/completions", b'{"messages": [{"content": "x"}], "temperature": "hot"}', 400),
        ("/chat/completions", b'{"messages": [{"content": "x"}], "stream": true}', 400),
        ("/completions", b'{"prompt": [1, 2]}', 400),
        ("/embeddings", b"{}", 404),
    ],
)
def test_server_rejects_bad_requests(echo, path, data, status):
    fake, server = echo
    code, answer = _post(server.url + path, data)
    assert code == status and not fake.calls
    kind = "invalid_request_error" if status == 400 else "not_found_error"
    assert answer["error"]["type"] == kind
    assert answer["error"]["message"]


def test_models_endpoint_and_unknown_get(echo):
    _, server = echo
    with urllib.request.urlopen(server.url + "/models", timeout=5) as response:
        assert json.loads(response.read())["data"][0]["id"] == "echo-1"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(server.url + "/nothing", timeout=5)
    with info.value:
        assert info.value.code == 404


def test_server_down_is_quick_and_one_line():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    start = time.perf_counter()
    with pytest.raises(GeneratorUnavailable, match="cannot reach") as info:
        _client(model="", base_url=url, timeout_s=2)  # discovery fails at start
    gen = _client(model="m", base_url=url, timeout_s=2)
    with pytest.raises(GeneratorUnavailable, match="cannot reach") as info2:
        gen.generate(["a", "b"], Sampling(), 0)
    assert time.perf_counter() - start < 2
    for message in (str(info.value), str(info2.value)):
        assert url in message and "\n" not in message


def test_a_stopped_server_is_down_for_kept_alive_clients_too():
    server = GeneratorServer(Echo(), model_name="echo-1").start()
    gen = _client(server)
    assert len(gen.generate(["a"], Sampling(), 0)) == 1  # a keep-alive connection now exists
    server.stop()
    with pytest.raises(GeneratorUnavailable, match="cannot reach"):
        gen.generate(["b"], Sampling(), 0)


def test_timeout_names_the_limit():
    with GeneratorServer(Echo(delay=1.0)) as server:
        gen = _client(server, timeout_s=0.3)
        with pytest.raises(GeneratorUnavailable, match=r"did not answer within 0\.3 s") as info:
            gen.generate(["a"], Sampling(), 0)
        assert server.url in str(info.value) and "\n" not in str(info.value)


def test_server_error_is_retried_by_the_client():
    fake = Echo(fail=1)
    with GeneratorServer(fake, model_name="echo-1") as server:
        assert _client(server, max_retries=2).generate(["a"], Sampling(), 4) == [
            "a|seed=4|k=50|t=0.8|p=0.95|m=1024"
        ]
        assert len(fake.calls) == 2
        fake.fail = 1
        with pytest.raises(GeneratorUnavailable, match="HTTP 500: RuntimeError: boom second"):
            _client(server).generate(["a"], Sampling(), 4)


def test_save_load_round_trip(echo, tmp_path):
    _, server = echo
    gen = _client(server, api="completions")
    assert gen.refine([("p", "c")], 1) is None
    gen.save(tmp_path / "gen")
    saved = json.loads((tmp_path / "gen" / "openai.json").read_text())
    assert saved == {"model": "echo-1", "base_url": server.url, "api": "completions"}
    _client(server, api="completions").load(tmp_path / "gen")
    with pytest.warns(UserWarning, match="model 'echo-1' -> 'other'"):
        _client(server, model="other", api="completions").load(tmp_path / "gen")


@pytest.mark.torch
def test_learned_generator_behind_the_server():
    pytest.importorskip("torch")
    from archrefine import space
    from archrefine.real.text import LearnedTextGenerator

    ref = "Improve on:\n```python\n" + space.to_source(space.KNOWN["vgg"]) + "```\n"
    with GeneratorServer(LearnedTextGenerator(seed=0), model_name="learned") as server:
        gen = _client(server, model="", timeout_s=30)
        assert gen.model == "learned"
        out = gen.generate([ref] * 6, Sampling(), seed=3)
        assert out == gen.generate([ref] * 6, Sampling(), seed=3)
    blocks = [o for o in out if o.startswith("```python\n")]
    assert blocks
    for block in blocks:
        compile(block.removeprefix("```python\n").split("```")[0], "<net>", "exec")


class Stub:
    """A misbehaving 'OpenAI' server (http.server): every POST answers `body` with `kind`;
    GET /v1/models lists one model. Counts the POSTs (to see the retries)."""

    def __init__(self, body: bytes, kind: str = "application/json", status: int = 200) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from threading import Thread

        stub = self
        self.posts = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, data: bytes, content_type: str, code: int = 200) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                models = {"object": "list", "data": [{"id": "m", "object": "model"}]}
                self._reply(json.dumps(models).encode(), "application/json")

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stub.posts += 1
                self._reply(body, kind, status)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self) -> Stub:
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _chat(choices) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": choices}).encode()  # fmt: skip


@pytest.mark.parametrize(
    "body, kind, message",
    [
        (b'{"choices": [{"message": ', "application/json", "not a JSON completion"),
        (b"<html><body>502 Bad Gateway</body></html>", "text/html", "not a completion object"),
        (_chat([]), "application/json", "no choices"),
        (b"[" * 5000 + b"]" * 5000, "application/json", "not a"),
        (_chat([{"index": 0, "message": {"role": "assistant"}}]), "application/json", "no text"),
        (json.dumps({"choices": "many"}).encode(), "application/json", "not a completion"),
    ],
    ids=["malformed", "html", "no-choices", "deeply-nested", "no-content", "choices-not-list"],
)
@pytest.mark.parametrize("api", ["chat", "completions"])
def test_unusable_answers_are_retried_then_one_line(body, kind, message, api):
    if api == "completions" and b"message" in body:
        body = body.replace(b'"message": {"role": "assistant"}', b'"text": null')
    with Stub(body, kind) as stub:
        gen = _client(model="m", base_url=stub.url, max_retries=2, api=api)
        with pytest.raises(GeneratorUnavailable, match="unusable answer 3 time") as info:
            gen.generate(["a"], Sampling(), 0)
        assert stub.posts == 3  # retried
        text = str(info.value)
        assert "\n" not in text and stub.url in text and (message in text or api != "chat")


def test_a_model_that_wrote_nothing_is_an_empty_answer_not_an_error():
    with Stub(_chat([{"index": 0, "message": {"role": "assistant", "content": None},
                      "finish_reason": "length"}])) as stub:  # fmt: skip
        assert _client(model="m", base_url=stub.url).generate(["a"], Sampling(), 0) == [""]


def test_an_unusable_model_list_is_one_line():
    with Stub(b"") as stub:
        stub.httpd.RequestHandlerClass.do_GET = lambda self: self._reply(b"<html>", "text/html")
        with pytest.raises(GeneratorUnavailable, match="unusable answer") as info:
            _client(model="", base_url=stub.url)
        assert "\n" not in str(info.value)


def test_no_base_url_and_no_env_var_is_an_error(monkeypatch):
    from archrefine.core.config import ConfigError, load_config
    from archrefine.real.config import RealConfig

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(GeneratorUnavailable, match=r"generator.base_url or \$OPENAI_BASE_URL"):
        OpenAIGenerator("m")
    with pytest.raises(ConfigError, match="generator.base_url: empty"):
        load_config(None, ["generator.kind=openai"], model=RealConfig)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert load_config(None, ["generator.kind=openai"], model=RealConfig).generator.base_url == ""
