"""The Ollama native adapter against a local server speaking Ollama's documented API.

The server (``tests/fakes/ollama_server.py``) is first checked with the official ``ollama``
Python client as the reference; then the adapter is tested against it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import ollama
import pytest
from starlette.applications import Starlette

from fakes import free_port, serve
from fakes.ollama_server import make_app
from tierlm.backends import create_backend
from tierlm.backends.base import collect
from tierlm.backends.ollama import OllamaBackend, full_name
from tierlm.config.backends import OllamaConfig
from tierlm.errors import (
    BackendBadRequest,
    BackendUnavailable,
    Overloaded,
    ProtocolError,
    ServerError,
)
from tierlm.types import ChatRequest

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def app() -> Starlette:
    return make_app()


@pytest.fixture(scope="module")
def url(app: Starlette) -> Iterator[str]:
    with serve(app) as base:
        yield base


def _backend(url: str, model: str = "llama3.2", **settings: Any) -> OllamaBackend:
    b = create_backend(
        OllamaConfig(
            name="ollama",
            model=model,
            url=url,
            boundary="host",
            **settings,
        )
    )
    assert isinstance(b, OllamaBackend)
    return b


async def test_official_client_accepts_the_server(url: str) -> None:
    client = ollama.AsyncClient(host=url)
    resp = await client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi you"}])
    assert resp.message.content == "You said: hi you" and resp.done
    assert resp.prompt_eval_count == 2 and resp.done_reason == "stop"
    pieces = [
        c
        async for c in await client.chat(
            model="llama3.2",
            messages=[{"role": "user", "content": "a b c"}],
            stream=True,
            options={"num_predict": 3},
        )
    ]
    assert "".join(c.message.content or "" for c in pieces) == "You said: a"
    assert pieces[-1].done and pieces[-1].done_reason == "length"
    tool = await client.chat(
        model="llama3.2",
        tools=[WEATHER],
        messages=[{"role": "user", "content": "weather in Paris?"}],
    )
    assert tool.message.tool_calls is not None
    assert tool.message.tool_calls[0].function.arguments == {"city": "Paris"}
    listed = await client.list()
    assert "llama3.2:latest" in [m.model for m in listed.models]
    running = await client.ps()
    assert "smollm2:135m" in [m.model for m in running.models]
    with pytest.raises(ollama.ResponseError) as info:
        await client.chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404
    await client.close()


async def test_complete_sends_keep_alive_and_options(url: str, app: Starlette) -> None:
    b = _backend(url, keep_alive="10m", num_ctx=2048)
    req = ChatRequest.from_prompt(
        "hello there", temperature=0.2, seed=7, max_tokens=50, stop=["\n"]
    )
    try:
        resp = await b.complete(req)
    finally:
        await b.aclose()
    assert resp.text == "You said: hello there"
    assert resp.model == "llama3.2:latest"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (2, 4)
    body = app.state.requests[-1]
    assert body["keep_alive"] == "10m" and body["stream"] is False
    assert body["options"] == {
        "temperature": 0.2,
        "seed": 7,
        "num_predict": 50,
        "stop": ["\n"],
        "num_ctx": 2048,
    }


async def test_stream(url: str) -> None:
    b = _backend(url)
    try:
        events = [e async for e in b.stream(ChatRequest.from_prompt("a b c d", max_tokens=3))]
    finally:
        await b.aclose()
    assert len(events) == 4
    assert "".join(e.text for e in events) == "You said: a"
    assert events[-1].finish_reason == "length"
    assert events[-1].usage is not None and events[-1].usage.completion_tokens == 3


@pytest.mark.parametrize("streamed", [False, True])
async def test_tool_calls(url: str, streamed: bool) -> None:
    b = _backend(url)
    req = ChatRequest.from_prompt("weather in Paris?", tools=[WEATHER])
    try:
        resp = await (collect(b.stream(req), model="x") if streamed else b.complete(req))
    finally:
        await b.aclose()
    assert resp.finish_reason == "tool_calls"
    assert resp.message.tool_calls is not None
    fn = resp.message.tool_calls[0].function
    assert fn["name"] == "get_weather" and json.loads(fn["arguments"]) == {"city": "Paris"}


async def test_errors(url: str) -> None:
    cases = [("nope", BackendBadRequest), ("busy", Overloaded), ("crash", ServerError)]
    for model, expected in cases:
        b = _backend(url, model)
        try:
            with pytest.raises(expected):
                await b.complete(ChatRequest.from_prompt("x"))
            with pytest.raises(expected):
                await collect(b.stream(ChatRequest.from_prompt("x")), model="x")
        finally:
            await b.aclose()
    for model, expected_stream in (
        ("stream-error", ServerError),
        ("stream-truncated", ProtocolError),
    ):
        b = _backend(url, model)
        try:
            with pytest.raises(expected_stream):
                await collect(b.stream(ChatRequest.from_prompt("a b c")), model="x")
        finally:
            await b.aclose()
    b = _backend(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(BackendUnavailable):
        await b.complete(ChatRequest.from_prompt("x"))
    h = await b.health()
    assert h.ok is False and "unreachable" in h.detail
    await b.aclose()


async def test_health_warm_cold_and_keep_alive(url: str) -> None:
    warm = _backend(url, "smollm2:135m")
    cold = _backend(url, "llama3.2", keep_alive=0)
    missing = _backend(url, "qwen3")
    try:
        hw = await warm.health()
        assert hw.ok and hw.loaded is True and hw.detail == "loaded"
        assert hw.memory_needed_gb is not None and hw.memory_free_gb is not None
        await cold.complete(ChatRequest.from_prompt("x"))  # keep_alive 0: unloaded after
        hc = await cold.health()
        assert hc.ok and hc.loaded is False and "cold" in hc.detail
        assert "llama3.2:latest" in hc.models and "llama3.2:latest" not in hc.loaded_models
        hm = await missing.health()
        assert hm.ok is False and "ollama pull qwen3" in hm.detail
    finally:
        for b in (warm, cold, missing):
            await b.aclose()


def test_names() -> None:
    assert full_name("llama3.2") == "llama3.2:latest"
    assert full_name("smollm2:135m") == "smollm2:135m"
    assert full_name("hf.co/org/model") == "hf.co/org/model:latest"
