"""The Anthropic Messages adapter against a local server speaking the documented wire format.

The server (``tests/fakes/anthropic_server.py``) is first checked with the official
``anthropic`` SDK as the reference client; then the adapter is tested against it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from starlette.applications import Starlette

from fakes import serve
from fakes.anthropic_server import make_app
from tierlm.backends import create_backend
from tierlm.backends.anthropic import AnthropicBackend, to_anthropic
from tierlm.backends.base import collect
from tierlm.config.backends import AnthropicConfig
from tierlm.errors import (
    BackendAuthError,
    BackendBadRequest,
    BackendError,
    ContextLengthExceeded,
    Overloaded,
    ProtocolError,
    RateLimited,
    ServerError,
)
from tierlm.types import ChatRequest, Message, ToolCall

KEY = "sk-ant-test-SECRET-0123"
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


def _backend(url: str, model: str = "claude-fake", **kw: Any) -> AnthropicBackend:
    cfg = AnthropicConfig(
        name="claude",
        model=model,
        url=url,
        boundary="external",
        api_key=KEY,
        **kw,
    )
    b = create_backend(cfg)
    assert isinstance(b, AnthropicBackend)
    return b


# ------------------------------------------------------------ the server, by the official SDK


async def test_official_sdk_accepts_the_server(url: str) -> None:
    client = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
    msg = await client.messages.create(
        model="claude-fake",
        max_tokens=50,
        system="Be brief.",
        messages=[{"role": "user", "content": "hello there"}],
    )
    assert msg.content[0].type == "text" and msg.content[0].text == "You said: hello there"
    assert msg.stop_reason == "end_turn" and msg.usage.input_tokens == 4
    async with client.messages.stream(
        model="claude-fake",
        max_tokens=50,
        tools=[
            {
                "name": "get_weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
        messages=[{"role": "user", "content": "weather in Paris?"}],
    ) as stream:
        final = await stream.get_final_message()
    tool = next(b for b in final.content if b.type == "tool_use")
    assert tool.input == {"city": "Paris"} and final.stop_reason == "tool_use"
    async with client.messages.stream(
        model="claude-fake", max_tokens=50, messages=[{"role": "user", "content": "one two three"}]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
    assert text == "You said: one two three"
    with pytest.raises(anthropic.RateLimitError):
        await client.messages.create(
            model="err-rate_limit_error", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.APIStatusError) as info:
        await client.messages.create(
            model="err-overloaded_error", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 529
    with pytest.raises(anthropic.APIStatusError):
        async with client.messages.stream(
            model="stream-overloaded",
            max_tokens=50,
            messages=[{"role": "user", "content": "a b c"}],
        ) as s:
            await s.get_final_message()
    await client.close()


# ------------------------------------------------------------ the adapter


async def test_complete(url: str, app: Starlette) -> None:
    b = _backend(url)
    req = ChatRequest(
        messages=[
            Message(role="system", content="Be brief."),
            Message(role="user", content="hello there"),
        ],
        max_tokens=50,
        temperature=1.5,
        stop=["\n\n"],
    )
    try:
        resp = await b.complete(req)
    finally:
        await b.aclose()
    assert resp.text == "You said: hello there"
    assert resp.model == "claude-fake-20241022"
    assert resp.finish_reason == "stop"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (4, 4)
    sent = app.state.requests[-1]
    assert sent["headers"]["x-api-key"] == KEY
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    body = sent["body"]
    assert body["system"] == "Be brief." and body["temperature"] == 1.0
    assert body["stop_sequences"] == ["\n\n"]


async def test_stream_and_length(url: str) -> None:
    b = _backend(url)
    try:
        events = [e async for e in b.stream(ChatRequest.from_prompt("a b c d e", max_tokens=4))]
    finally:
        await b.aclose()
    assert len(events) >= 4
    assert "".join(e.text for e in events) == "You said: a b"
    last = events[-1]
    assert last.finish_reason == "length"
    assert last.usage is not None and last.usage.completion_tokens == 4
    assert last.usage.prompt_tokens == 5
    assert last.model == "claude-fake-20241022"


@pytest.mark.parametrize("streamed", [False, True])
async def test_tool_calls(url: str, app: Starlette, streamed: bool) -> None:
    b = _backend(url)
    req = ChatRequest.from_prompt(
        "What's the weather in Paris?", tools=[WEATHER], tool_choice="required", max_tokens=100
    )
    try:
        resp = await (collect(b.stream(req), model="x") if streamed else b.complete(req))
    finally:
        await b.aclose()
    assert resp.finish_reason == "tool_calls"
    assert resp.message.tool_calls is not None
    call = resp.message.tool_calls[0]
    assert call.id == "toolu_01A" and call.function["name"] == "get_weather"
    assert json.loads(call.function["arguments"]) == {"city": "Paris"}
    body = app.state.requests[-1]["body"]
    assert body["tools"][0]["input_schema"]["required"] == ["city"]
    assert body["tool_choice"] == {"type": "any"}


async def test_tool_results_round_trip(url: str) -> None:
    call = ToolCall(
        id="toolu_01A", function={"name": "get_weather", "arguments": '{"city": "Paris"}'}
    )
    msgs = [
        Message(role="user", content="weather?"),
        Message(role="assistant", content=None, tool_calls=[call]),
        Message(role="tool", tool_call_id="toolu_01A", content="18C and sunny"),
    ]
    system, converted = to_anthropic(msgs)
    assert system == ""
    assert converted[1]["content"][0] == {
        "type": "tool_use",
        "id": "toolu_01A",
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert converted[2]["content"][0]["type"] == "tool_result"
    b = _backend(url)
    try:
        resp = await b.complete(ChatRequest(messages=msgs, max_tokens=50))
    finally:
        await b.aclose()
    assert resp.text == "You said: Tool said: 18C and sunny"


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("err-invalid_request_error", BackendBadRequest),
        ("err-context", ContextLengthExceeded),
        ("err-authentication_error", BackendAuthError),
        ("err-permission_error", BackendAuthError),
        ("err-not_found_error", BackendBadRequest),
        ("err-request_too_large", BackendBadRequest),
        ("err-rate_limit_error", RateLimited),
        ("err-api_error", ServerError),
        ("err-overloaded_error", Overloaded),
    ],
)
async def test_documented_errors(url: str, model: str, expected: type[BackendError]) -> None:
    b = _backend(url, model)
    req = ChatRequest.from_prompt("secret prompt text", max_tokens=5)
    try:
        with pytest.raises(BackendError) as info:
            await b.complete(req)
        with pytest.raises(BackendError) as sinfo:
            await collect(b.stream(req), model="x")
    finally:
        await b.aclose()
    for err in (info.value, sinfo.value):
        assert type(err) is expected
        assert KEY not in str(err) and "secret prompt" not in str(err)
    if expected is RateLimited:
        assert isinstance(info.value, RateLimited) and info.value.retry_after == 12


async def test_stream_errors(url: str) -> None:
    for model, expected in (("stream-overloaded", Overloaded), ("stream-truncated", ProtocolError)):
        b = _backend(url, model)
        try:
            with pytest.raises(expected):
                await collect(b.stream(ChatRequest.from_prompt("a b c", max_tokens=9)), model="x")
        finally:
            await b.aclose()


async def test_missing_key_and_health(url: str) -> None:
    cfg = AnthropicConfig(name="c", model="claude-3-5-haiku-latest", boundary="external")
    nokey = AnthropicBackend(cfg)
    with pytest.raises(BackendAuthError, match="ANTHROPIC_API_KEY"):
        await nokey.complete(ChatRequest.from_prompt("x"))
    assert (await nokey.health()).ok is False
    b = _backend(url + "/v1")  # a base URL with /v1 works too
    try:
        h = await b.health()
    finally:
        await b.aclose()
    assert h.ok is True and h.models == ["claude-fake"]


def test_body_sends_only_anthropic_metadata() -> None:
    b = _backend("http://127.0.0.1:9")
    meta = {"metadata": {"user_id": "u-7", "note": "kept out"}, "user": "u-other"}
    req = ChatRequest.from_prompt("hi", extra={**meta, "logit_bias": {"1": 2}})
    body = b.body(req, stream=False)
    assert body["metadata"] == {"user_id": "u-7"}  # Anthropic's only metadata key
    assert "logit_bias" not in body and "user" not in body
    fallback = b.body(ChatRequest.from_prompt("hi", extra={"user": "u-8"}), stream=False)
    assert fallback["metadata"] == {"user_id": "u-8"}
    assert "metadata" not in b.body(ChatRequest.from_prompt("hi"), stream=False)
