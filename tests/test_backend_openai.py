"""The OpenAI-compatible adapter against real servers on 127.0.0.1.

- llama.cpp's OpenAI-compatible server (``python -m llama_cpp.server``) with SmolLM2, started
  once for this module: completion, streaming, context-length errors, health, prompt tools
  with grammar-constrained decoding.
- A local server returning each documented error of OpenAI, vLLM and llama.cpp
  (``tests/fakes/openai_server.py``): the mapping onto the error tree, timeouts, resets.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from conftest import SMOLLM2
from fakes import closing_server, free_port, serve
from fakes.openai_server import make_app
from tierlm.backends import create_backend
from tierlm.backends.base import collect
from tierlm.backends.http_common import parse_retry_after, sse_events
from tierlm.backends.openai_compat import OpenAIBackend, parse_queue_metrics
from tierlm.backends.tools import tool_call_schema
from tierlm.config.backends import OpenAIConfig
from tierlm.errors import (
    BackendAuthError,
    BackendBadRequest,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    ContentPolicyError,
    ContextLengthExceeded,
    Overloaded,
    ProtocolError,
    RateLimited,
    ServerError,
)
from tierlm.types import ChatRequest

SECRET_KEY = "sk-test-NEVER-IN-ERRORS-0123456789"
SECRET_PROMPT = "TOPSECRET-PROMPT-CONTENT"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m llama_cpp.server`` with SmolLM2 on a free port (n_ctx 512)."""
    if importlib.util.find_spec("sse_starlette") is None:
        pytest.fail("llama.cpp's server is not installed: pip install 'llama-cpp-python[server]'")
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(SMOLLM2),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "512",
        "--n_threads",
        "2",
        "--logits_all",
        "false",
    ]
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_PROXY": "127.0.0.1"}
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            if proc.poll() is not None:
                err = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"llama_cpp.server exited: {err}")
            try:
                if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not start in 60 s")
            time.sleep(0.2)
        yield url + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _llama_backend(url: str, **kw: Any) -> OpenAIBackend:
    cfg = OpenAIConfig(name="llama-server", provider="llama-server", url=url, model="smollm2", **kw)
    backend = create_backend(cfg)
    assert isinstance(backend, OpenAIBackend)
    return backend


def _req(prompt: str = "Say hello.", **kw: Any) -> ChatRequest:
    return ChatRequest.from_prompt(
        prompt, max_tokens=kw.pop("max_tokens", 12), temperature=0, seed=1, **kw
    )


# ------------------------------------------------------------------- real llama.cpp server


async def test_complete_against_llama_server(llama_server: str) -> None:
    backend = _llama_backend(llama_server)
    try:
        resp = await backend.complete(_req())
    finally:
        await backend.aclose()
    assert resp.text.strip()
    assert resp.usage.prompt_tokens > 0
    assert 0 < resp.usage.completion_tokens <= 12
    assert resp.finish_reason in ("stop", "length")
    assert resp.model == "smollm2"  # what the server says answered
    assert resp.backend == "llama-server"


async def test_stream_matches_complete(llama_server: str) -> None:
    backend = _llama_backend(llama_server)
    try:
        whole = await backend.complete(_req(max_tokens=10))
        events = [ev async for ev in backend.stream(_req(max_tokens=10))]
    finally:
        await backend.aclose()
    assert len(events) >= 3  # really incremental
    assert all(ev.finish_reason is None for ev in events[:-1])
    assert events[-1].finish_reason in ("stop", "length")
    streamed = "".join(ev.text for ev in events)
    assert streamed == whole.text  # same seed, temperature 0


async def test_context_length_from_llama_server(llama_server: str) -> None:
    backend = _llama_backend(llama_server)
    try:
        with pytest.raises(ContextLengthExceeded) as info:
            await backend.complete(_req("hello " * 700))
        # llama_cpp.server answers a too-long *streamed* request with 200 and an empty
        # event stream (its error is only logged): an answer that never finished
        with pytest.raises(ProtocolError):
            await collect(backend.stream(_req("hello " * 700)), model="x")
    finally:
        await backend.aclose()
    assert info.value.upstream_status == 400
    assert not info.value.retryable


async def test_health_against_llama_server(llama_server: str) -> None:
    backend = _llama_backend(llama_server)
    try:
        h = await backend.health()
    finally:
        await backend.aclose()
    assert h.ok is True
    assert h.models and h.models[0].endswith(SMOLLM2.name)
    assert h.latency_ms is not None and h.latency_ms > 0
    assert h.in_flight == 0


@pytest.mark.slow
async def test_prompt_tools_with_grammar_against_llama_server(llama_server: str) -> None:
    """llama-server has no native tools: the adapter describes them in the prompt and
    constrains decoding with the tool-call JSON schema; the client gets OpenAI tool_calls."""
    backend = _llama_backend(llama_server, constrain_tools="json_object")
    req = _req(
        "What is the weather in Paris?", max_tokens=60, tools=[WEATHER_TOOL], tool_choice="required"
    )
    try:
        resp = await backend.complete(req)
        events = [ev async for ev in backend.stream(req)]
    finally:
        await backend.aclose()
    assert resp.finish_reason == "tool_calls"
    assert resp.message.tool_calls is not None
    call = resp.message.tool_calls[0]
    assert call.function["name"] == "get_weather"
    assert isinstance(json.loads(call.function["arguments"])["city"], str)
    assert events[-1].finish_reason == "tool_calls"
    deltas = [d for ev in events for d in ev.tool_calls or []]
    assert deltas and deltas[0]["function"]["name"] == "get_weather"


# ------------------------------------------------------------------- the error server


@pytest.fixture(scope="module")
def fake_app() -> Starlette:
    return make_app()


@pytest.fixture(scope="module")
def fake_url(fake_app: Starlette) -> Iterator[str]:
    with serve(fake_app) as url:
        yield url + "/v1"


def _fake(url: str, scenario: str, **kw: Any) -> OpenAIBackend:
    cfg = OpenAIConfig(
        name="fake",
        url=url,
        model=scenario,
        boundary="site",
        api_key=SECRET_KEY,
        **kw,
    )
    return OpenAIBackend(cfg)


ERROR_CASES = [
    ("ctx-openai", ContextLengthExceeded),
    ("ctx-vllm", ContextLengthExceeded),
    ("ctx-llamacpp", ContextLengthExceeded),
    ("policy", ContentPolicyError),
    ("badreq", BackendBadRequest),
    ("auth", BackendAuthError),
    ("forbidden", BackendAuthError),
    ("notfound", BackendBadRequest),
    ("ratelimit-s", RateLimited),
    ("quota", BackendAuthError),
    ("unprocessable", BackendBadRequest),
    ("server", ServerError),
    ("badgateway", ServerError),
    ("unavailable", Overloaded),
    ("gwtimeout", BackendTimeout),
    ("malformed", ProtocolError),
    ("embedded-error", Overloaded),
]


@pytest.mark.parametrize(("scenario", "expected"), ERROR_CASES)
async def test_error_mapping(fake_url: str, scenario: str, expected: type[BackendError]) -> None:
    backend = _fake(fake_url, scenario)
    req = _req(SECRET_PROMPT)
    try:
        with pytest.raises(BackendError) as info:
            await backend.complete(req)
        with pytest.raises(BackendError) as sinfo:
            await collect(backend.stream(req), model="x")
    finally:
        await backend.aclose()
    for err in (info.value, sinfo.value):
        assert type(err) is expected, (scenario, type(err), err.message)
        assert err.backend == "fake"
        assert err.request_id == req.request_id
        text = f"{err} {err.message!r} {err.__cause__!r}"
        assert SECRET_KEY not in text and SECRET_PROMPT not in text
        assert "TOPSECRET-INPUT" not in text


@pytest.mark.parametrize(
    ("scenario", "low", "high"),
    [("ratelimit-s", 7, 7), ("ratelimit-ms", 1.5, 1.5), ("ratelimit-date", 25, 31)],
)
async def test_retry_after(fake_url: str, scenario: str, low: float, high: float) -> None:
    backend = _fake(fake_url, scenario)
    try:
        with pytest.raises(RateLimited) as info:
            await backend.complete(_req())
    finally:
        await backend.aclose()
    assert info.value.retry_after is not None
    assert low <= info.value.retry_after <= high
    assert info.value.retryable


async def test_rate_limited_without_retry_after(fake_url: str) -> None:
    backend = _fake(fake_url, "ratelimit-none")
    try:
        with pytest.raises(RateLimited) as info:
            await backend.complete(_req())
    finally:
        await backend.aclose()
    assert info.value.retry_after is None


@pytest.mark.parametrize("scenario", ["sse-malformed", "sse-truncated"])
async def test_broken_streams_are_protocol_errors(fake_url: str, scenario: str) -> None:
    backend = _fake(fake_url, scenario)
    got: list[str] = []

    async def consume() -> None:
        async for ev in backend.stream(_req()):
            got.append(ev.text)

    try:
        with pytest.raises(ProtocolError):
            await consume()
    finally:
        await backend.aclose()
    assert got[:1] == ["Hel"]  # what came before the break was delivered


async def test_error_inside_stream(fake_url: str) -> None:
    backend = _fake(fake_url, "sse-error")
    try:
        with pytest.raises(Overloaded):
            await collect(backend.stream(_req()), model="x")
    finally:
        await backend.aclose()


async def test_stream_usage_model_and_request_body(fake_url: str, fake_app: Starlette) -> None:
    backend = _fake(fake_url, "ok", headers={"x-extra": "1"})
    req = _req(max_tokens=5, stop=["\n"], top_k=3, extra={"logit_bias": {"50256": -100}})
    try:
        events = [ev async for ev in backend.stream(req)]
    finally:
        await backend.aclose()
    assert "".join(e.text for e in events) == "Hello"
    last = events[-1]
    assert last.finish_reason == "stop"
    assert last.usage is not None and last.usage.prompt_tokens == 11
    assert last.model == "ok-2024-08-06"
    sent = fake_app.state.requests[-1]
    assert sent["headers"]["authorization"] == f"Bearer {SECRET_KEY}"
    assert sent["headers"]["x-extra"] == "1"
    body = sent["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 5 and body["stop"] == ["\n"] and body["top_k"] == 3
    assert body["logit_bias"] == {"50256": -100}


async def test_stream_without_done_but_finished_is_accepted(fake_url: str) -> None:
    backend = _fake(fake_url, "sse-no-done")
    try:
        resp = await collect(backend.stream(_req()), model="x")
    finally:
        await backend.aclose()
    assert resp.text == "Hello"


async def test_native_tool_calls_stream_and_complete(fake_url: str, fake_app: Starlette) -> None:
    for scenario, streamed in (("tools", False), ("sse-tools", True)):
        backend = _fake(fake_url, scenario)
        req = _req("weather?", tools=[WEATHER_TOOL])
        try:
            resp = (
                await collect(backend.stream(req), model="x")
                if streamed
                else await backend.complete(req)
            )
        finally:
            await backend.aclose()
        assert resp.finish_reason == "tool_calls"
        assert resp.message.tool_calls is not None
        fn = resp.message.tool_calls[0].function
        assert fn["name"] == "get_weather"
        assert json.loads(fn["arguments"]) == {"city": "Paris"}
        assert fake_app.state.requests[-1]["body"]["tools"] == [WEATHER_TOOL]


async def test_first_token_and_stall_timeouts(fake_url: str) -> None:
    # The fake waits 2 s (then answers): a timeout raised at all was raised by the 0.5 s limit
    # of that phase, so no wall-clock margin is needed; `total` is out of reach.
    timeouts = {"connect": 1.0, "first_token": 0.5, "stall": 0.5, "total": 3600.0}
    for scenario, phase in (("slow-first", "first_token"), ("stall", "stall")):
        backend = _fake(fake_url, scenario, timeouts=timeouts)
        try:
            with pytest.raises(BackendTimeout) as info:
                await collect(backend.stream(_req()), model="x")
        finally:
            await backend.aclose()
        assert phase in info.value.message
    backend = _fake(
        fake_url,
        "slow-first",
        timeouts={"connect": 1.0, "first_token": 5, "stall": 5, "total": 0.5},
    )
    try:
        with pytest.raises(BackendTimeout, match="total"):
            await backend.complete(_req())
    finally:
        await backend.aclose()


async def test_connection_refused_and_reset() -> None:
    port = free_port()
    backend = _fake(f"http://127.0.0.1:{port}/v1", "ok")
    with pytest.raises(BackendUnavailable) as info:
        await backend.complete(_req())
    assert info.value.retryable
    h = await backend.health()
    assert h.ok is False and "unreachable" in h.detail
    await backend.aclose()
    with closing_server() as url:
        backend = _fake(url + "/v1", "ok")
        try:
            with pytest.raises(BackendUnavailable):
                await backend.complete(_req())
            with pytest.raises(BackendUnavailable):
                await collect(backend.stream(_req()), model="x")
        finally:
            await backend.aclose()


async def test_health_reads_queue_metrics(fake_url: str) -> None:
    backend = _fake(fake_url, "served-model")
    try:
        h = await backend.health()
    finally:
        await backend.aclose()
    assert h.ok and h.loaded is True and h.models == ["served-model"]
    assert (h.in_flight, h.queued) == (3, 5)


def test_parse_queue_metrics_other_servers() -> None:
    text = "llamacpp:requests_processing 2\nllamacpp:requests_deferred 1\n"
    assert parse_queue_metrics(text) == (2, 1)
    assert parse_queue_metrics('sglang:num_running_reqs{a="b"} 4\n') == (4, None)
    assert parse_queue_metrics("other 1\n") == (None, None)


async def test_external_provider_without_key_fails_without_network() -> None:
    cfg = OpenAIConfig(name="openai", provider="openai", model="gpt-4o-mini")
    backend = OpenAIBackend(cfg)
    assert backend.base_url == "https://api.openai.com/v1"
    with pytest.raises(BackendAuthError, match="OPENAI_API_KEY"):
        await backend.complete(_req())
    h = await backend.health()
    assert h.ok is False


def test_provider_presets_and_quirks() -> None:
    mistral = OpenAIBackend(
        OpenAIConfig(name="m", provider="mistral", model="mistral-small-latest")
    )
    body = mistral.body(_req(top_k=5), stream=True)
    assert "stream_options" not in body  # quirk of the provider row
    assert "top_k" not in body  # not sent to an external provider
    local = OpenAIBackend(
        OpenAIConfig(
            name="v",
            provider="vllm",
            url="http://gpu:8000",
            model="m",
            quirks=["max_completion_tokens"],
        )
    )
    assert local.base_url == "http://gpu:8000/v1"
    body = local.body(_req(), stream=False)
    assert body["max_completion_tokens"] == 12 and "max_tokens" not in body
    with pytest.raises(ConfigError):
        OpenAIBackend(OpenAIConfig(name="x", model="m", boundary="site"))
    with pytest.raises(ConfigError):
        OpenAIBackend(
            OpenAIConfig(name="x", model="m", provider="nope", url="http://h", boundary="site")
        )


def test_constrained_tool_schema_shape() -> None:
    schema = tool_call_schema([WEATHER_TOOL], "auto")
    assert {"answer"} <= set(schema["anyOf"][1]["properties"])
    forced = tool_call_schema([WEATHER_TOOL], "required")
    item = forced["properties"]["tool_calls"]["items"]
    assert item["properties"]["name"] == {"const": "get_weather"}


async def test_official_sdk_reads_the_error_server_alike(fake_url: str) -> None:
    """The reference client maps the fake server's answers as the adapter does."""
    import openai

    client = openai.AsyncOpenAI(base_url=fake_url, api_key="k", max_retries=0)
    msgs: Any = [{"role": "user", "content": "hi"}]
    cases: list[tuple[str, type[Exception]]] = [
        ("ratelimit-s", openai.RateLimitError),
        ("auth", openai.AuthenticationError),
        ("forbidden", openai.PermissionDeniedError),
        ("notfound", openai.NotFoundError),
        ("ctx-openai", openai.BadRequestError),
        ("server", openai.InternalServerError),
        ("unavailable", openai.InternalServerError),
    ]
    for model, expected in cases:
        with pytest.raises(expected):
            await client.chat.completions.create(model=model, messages=msgs)
    ok = await client.chat.completions.create(model="ok", messages=msgs)
    assert ok.choices[0].message.content == "Hello" and ok.model == "ok-2024-08-06"
    stream = await client.chat.completions.create(model="sse-tools", messages=msgs, stream=True)
    args = "".join(
        [
            c.choices[0].delta.tool_calls[0].function.arguments or ""
            async for c in stream
            if c.choices and c.choices[0].delta.tool_calls
        ]
    )
    assert json.loads(args) == {"city": "Paris"}
    await client.close()


async def test_slow_consumer_is_not_a_stall(fake_url: str) -> None:
    """The stall limit measures upstream silence, not the time the caller spends per event."""
    backend = _fake(fake_url, "ok", timeouts={"connect": 1, "first_token": 1, "stall": 0.2})
    got = []
    try:
        async for ev in backend.stream(_req()):
            got.append(ev)
            await asyncio.sleep(0.4)
    finally:
        await backend.aclose()
    assert "".join(e.text for e in got) == "Hello" and got[-1].finish_reason == "stop"


async def test_sse_parsing_and_retry_after_units() -> None:
    async def lines(items: list[str]) -> AsyncIterator[str]:
        for i in items:
            yield i

    raw = [
        ": keep-alive",
        "event: delta",
        "data: a",
        "data: b",
        "id: 7",
        "",
        "data:x",
        "",
        "retry: 5",
        "data: tail",
    ]
    got = [e async for e in sse_events(lines(raw))]
    assert got == [("delta", "a\nb"), ("message", "x"), ("message", "tail")]
    assert parse_retry_after(
        {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470.0
    ) == pytest.approx(10.0)
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after-ms": "nan", "retry-after": "3"}) == 3.0


def test_session_follows_the_running_loop(fake_url: str) -> None:
    """One session per loop: a second ``asyncio.run`` (a new loop), the sync Router's loop
    thread, then a new loop again all work; sessions of closed or other loops are closed
    without leaking sockets (a leak warns, and warnings fail the test)."""
    backend = _fake(fake_url, "ok")
    assert asyncio.run(backend.complete(_req())).text == "Hello"
    assert asyncio.run(collect(backend.stream(_req()), model="x")).text == "Hello"
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        done = asyncio.run_coroutine_threadsafe(backend.complete(_req()), loop).result(10)
        assert done.text == "Hello"
        assert asyncio.run(backend.complete(_req())).text == "Hello"
        asyncio.run(backend.aclose())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    gc.collect()


async def test_connection_is_reused_after_streams() -> None:
    """A finished stream's tail (here sent 50 ms after ``[DONE]``) is read, so its connection
    goes back to the pool instead of being closed."""
    clients: list[tuple[str, int]] = []
    chunk = {"model": "m", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}
    end = {"model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        clients.append(tuple(scope["client"]))
        while (await receive()).get("more_body"):
            pass
        head = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        for data in (json.dumps(chunk), json.dumps(end), "[DONE]"):
            body = f"data: {data}\n\n".encode()
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    with serve(app) as url:
        backend = _fake(url + "/v1", "ok")
        try:
            for _ in range(3):
                assert (await collect(backend.stream(_req()), model="x")).text == "Hi"
        finally:
            await backend.aclose()
    assert len(clients) == 3 and len(set(clients)) == 1, clients


async def test_env_proxies_only_for_external_backends(
    fake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``HTTP_PROXY`` applies to external backends only (and ``NO_PROXY`` is honoured); a
    LAN or host backend never goes through an environment proxy."""
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: a request through it fails
    for var in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, dead)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)

    def external() -> OpenAIBackend:
        cfg = OpenAIConfig(
            name="fake",
            url=fake_url,
            model="ok",
            boundary="external",
            api_key=SECRET_KEY,
        )
        return OpenAIBackend(cfg)

    site, ext = _fake(fake_url, "ok"), external()
    try:
        assert (await site.complete(_req())).text == "Hello"
        with pytest.raises(BackendUnavailable):
            await ext.complete(_req())
    finally:
        await site.aclose()
        await ext.aclose()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    ext = external()
    try:
        assert (await ext.complete(_req())).text == "Hello"
    finally:
        await ext.aclose()
