"""The official ``openai`` SDK, unchanged, against the gateway (``create_app`` under uvicorn on
127.0.0.1, lifespan on): the tiny tier with the real SmolLM2 model, and a ``site`` tier on the
fake OpenAI-wire upstream for tool calls and pass-through fields.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from conftest import MODELS
from fakes import serve
from fakes.openai_server import make_app
from server_util import serve_gateway, settings, upstream_backend

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
MSG: list[Any] = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Any]:
    app = make_app()
    with serve(app) as url:
        app.state.url = url
        yield app


@pytest.fixture(scope="module")
def gateway(upstream: Any) -> Iterator[str]:
    url = upstream.state.url
    s = settings(
        [
            {
                "name": "smollm2",
                "kind": "llama_cpp",
                "model": "smollm2-135m-instruct",
                "options": {"temperature": 0.2, "repeat_penalty": 1.1},
                "threads": 2,
            },
            upstream_backend("site", url, "plain"),
            upstream_backend("tools", url, "tools"),
            upstream_backend("ssetools", url, "sse-tools"),
        ],
        [
            {"name": "tiny", "backends": ["smollm2"]},
            {"name": "site", "backends": ["site"]},
            {"name": "toolsite", "backends": ["tools", "ssetools"]},
        ],
        models_dir=str(MODELS),
    )
    with serve_gateway(s) as base:
        yield base


@pytest.fixture
def client(gateway: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def test_models_list(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "auto"
    assert {"tiny", "site", "toolsite", "tools", "smollm2", "ssetools"} <= set(ids)


@pytest.mark.slow  # the real tiny model answers
def test_chat_auto_routes_to_the_tiny_model(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=MSG, max_tokens=12
    )
    completion = raw.parse()
    assert raw.headers["x-tierlm-tier"] == "tiny"
    assert raw.headers["x-tierlm-backend"] == "smollm2"
    assert raw.headers["x-tierlm-boundary"] == "process"
    assert raw.headers["x-tierlm-model"] == completion.model
    assert completion.model not in ("auto", "tiny", "")
    assert "smollm2" in completion.model.lower()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    meta = (completion.model_extra or {})["tierlm"]
    assert meta["tier"] == "tiny" and meta["backend"] == "smollm2"
    assert meta["request_id"] == raw.headers["x-tierlm-request-id"]
    assert meta["attempts"] == 1 and meta["reasons"]
    assert 0.0 <= meta["complexity"] <= 1.0


@pytest.mark.slow  # the real tiny model answers
def test_streaming_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="auto",
        messages=MSG,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert stream.response.headers["x-tierlm-backend"] == "smollm2"
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens > 0
    assert all(c.model == stream.response.headers["x-tierlm-model"] for c in chunks)
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_pin_a_tier_and_pass_fields_through(client: openai.OpenAI, upstream: Any) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="site",
        messages=MSG,
        max_completion_tokens=7,
        stop="END",
        seed=3,
        user="u1",
        response_format={"type": "json_object"},
        extra_body={"repetition_penalty": 1.1},  # a self-hosted server's known field
    )
    completion = raw.parse()
    assert completion.model == "plain-2024-08-06"  # the model that really answered
    assert raw.headers["x-tierlm-tier"] == "site"
    assert raw.headers["x-tierlm-boundary"] == "site"
    sent = upstream.state.requests[-1]["body"]
    assert sent["model"] == "plain"
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["repetition_penalty"] == 1.1
    assert sent["stop"] == ["END"] and sent["seed"] == 3 and sent["user"] == "u1"
    assert sent.get("max_tokens", sent.get("max_completion_tokens")) == 7
    sent_before = len(upstream.state.requests)
    with pytest.raises(openai.BadRequestError) as err:  # a field tierlm does not know
        client.chat.completions.create(
            model="site", messages=MSG, extra_body={"custom_field": [1, 2]}
        )
    assert err.value.body["param"] == "custom_field"  # type: ignore[index]
    assert len(upstream.state.requests) == sent_before  # nothing was sent


def test_tools_pass_through(client: openai.OpenAI, upstream: Any) -> None:
    completion = client.chat.completions.create(
        model="tools",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
        tool_choice="auto",
    )
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    sent = upstream.state.requests[-1]["body"]
    assert sent["tools"] == [WEATHER] and sent["tool_choice"] == "auto"


def test_streamed_tool_calls(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="ssetools",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
        stream=True,
    )
    name, args, finish = "", "", None
    for c in stream:
        for d in c.choices[0].delta.tool_calls or []:
            name += d.function.name or "" if d.function else ""
            args += d.function.arguments or "" if d.function else ""
        finish = c.choices[0].finish_reason or finish
    assert name == "get_weather" and json.loads(args) == {"city": "Paris"}
    assert finish == "tool_calls"


def test_health_and_metrics(gateway: str, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="site", messages=MSG)
    h = httpx.get(gateway + "/health").json()
    assert h["status"] in ("ok", "degraded")
    assert set(h["backends"]) == {"smollm2", "site", "tools", "ssetools"}
    text = httpx.get(gateway + "/metrics").text
    labels = 'backend="site",route="/v1/chat/completions",status="200",tier="site"'
    assert "tierlm_requests_total{" + labels + "}" in text
    assert "tierlm_request_duration_seconds_bucket" in text
