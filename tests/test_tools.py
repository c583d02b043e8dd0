"""Prompt-based tool calling: the prompt, the forgiving parser, the strict validation."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tierlm.backends.base import collect
from tierlm.backends.tools import (
    finish_response,
    finish_stream,
    parse_tool_calls,
    plain_answer,
    prompt_request,
    tool_call_schema,
    tool_prompt,
    validate,
)
from tierlm.types import ChatRequest, ChatResponse, Message, StreamEvent, ToolCall

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "filters": {
                    "type": "object",
                    "properties": {"year": {"type": "integer"}},
                    "required": ["year"],
                },
            },
            "required": ["query"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, SEARCH]


def _calls(text: str) -> list[tuple[str, dict[str, Any]]] | None:
    calls = parse_tool_calls(text, TOOLS)
    if calls is None:
        return None
    for c in calls:
        assert c.id.startswith("call_") and c.type == "function"
    return [(c.function["name"], json.loads(c.function["arguments"])) for c in calls]


PARIS = [("get_weather", {"city": "Paris"})]


@pytest.mark.parametrize(
    "text",
    [
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}',
        'Sure! Let me look that up.\n{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```\nDone.',
        "```\n{'name': 'get_weather', 'arguments': {'city': 'Paris',},}\n```",
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '{"function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}',
        '[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}',  # cut short
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
    ],
)
def test_forgiving_shapes(text: str) -> None:
    assert _calls(text) == PARIS


def test_multiple_calls_and_python_literals() -> None:
    text = (
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo", '
        '"days": "3"}}, {"name": "search", "arguments": {"query": "fjords", '
        '"filters": {"year": 2024}}}]}'
    )
    assert _calls(text) == [
        ("get_weather", {"city": "Oslo", "days": 3}),
        ("search", {"query": "fjords", "filters": {"year": 2024}}),
    ]
    two_objects = (
        '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
        '{"name": "get_weather", "arguments": {"city": "Rome", "unit": "c"}}'
    )
    assert _calls(two_objects) == [
        ("get_weather", {"city": "Oslo"}),
        ("get_weather", {"city": "Rome", "unit": "c"}),
    ]
    assert validate(json.loads('{"a": true}'), {"type": "object"}) == []


@pytest.mark.parametrize(
    "text",
    [
        "The weather in Paris is sunny.",
        "Use braces like {this} in templates.",
        '{"name": "delete_everything", "arguments": {}}',  # unknown tool
        '{"name": "get_weather", "arguments": {"town": "Paris"}}',  # required field missing
        '{"name": "get_weather", "arguments": {"city": 42}}',  # wrong type
        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "kelvin"}}',  # enum
        '{"name": "search", "arguments": {"query": "x", "page": 2}}',  # additionalProperties
        '{"name": "search", "arguments": {"query": "x", "filters": {}}}',  # nested required
        "",
    ],
)
def test_plain_answers_and_invalid_calls_are_none(text: str) -> None:
    assert _calls(text) is None


def test_validate_reports_problems() -> None:
    schema = WEATHER["function"]["parameters"]
    assert validate({"city": "Paris", "days": 2}, schema) == []
    problems = validate({"days": 2.5, "unit": "k"}, schema)
    assert any("missing required 'city'" in p for p in problems)
    assert any("days" in p for p in problems) and any("unit" in p for p in problems)
    assert validate(True, {"type": "integer"})  # a bool is not an integer
    assert validate(3.0, {"type": "integer"}) == []
    assert validate("x", {"anyOf": [{"type": "integer"}, {"type": "string"}]}) == []
    assert validate([1, "a"], {"type": "array", "items": {"type": "integer"}})


def test_prompt_mentions_tools_and_choice() -> None:
    text = tool_prompt(TOOLS, "auto")
    assert "get_weather" in text and "search" in text and '"tool_calls"' in text
    assert "plain text" in text
    assert "must call the tool `search`" in tool_prompt(
        TOOLS, {"type": "function", "function": {"name": "search"}}
    )
    assert "at least one tool" in tool_prompt(TOOLS, "required")
    assert tool_prompt(TOOLS, "none") == ""


def test_schema_for_constrained_decoding() -> None:
    forced = tool_call_schema(TOOLS, {"type": "function", "function": {"name": "search"}})
    item = forced["properties"]["tool_calls"]["items"]
    assert item["properties"]["name"] == {"const": "search"}
    auto = tool_call_schema(TOOLS)
    assert len(auto["anyOf"][0]["properties"]["tool_calls"]["items"]["anyOf"]) == 2
    assert plain_answer('{"answer": "It is sunny."}') == "It is sunny."
    assert plain_answer("no json here") == "no json here"


def test_prompt_request_rewrites_history() -> None:
    call = ToolCall(id="call_1", function={"name": "get_weather", "arguments": '{"city": "Paris"}'})
    req = ChatRequest(
        messages=[
            Message(role="system", content="You are helpful."),
            Message(role="user", content="Weather?"),
            Message(role="assistant", tool_calls=[call]),
            Message(role="tool", tool_call_id="call_1", content="18C"),
        ],
        tools=TOOLS,
        tool_choice="auto",
    )
    out = prompt_request(req)
    assert out.tools is None and out.tool_choice is None
    assert out.messages[0].role == "system"
    assert (
        out.messages[0].text.startswith("You are helpful.")
        and "get_weather" in out.messages[0].text
    )
    assert json.loads(out.messages[2].text) == {
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    }
    assert out.messages[3].role == "user" and "18C" in out.messages[3].text
    assert req.tools == TOOLS  # the original is untouched


async def test_finish_response_and_stream() -> None:
    req = ChatRequest.from_prompt("weather?", tools=TOOLS)
    text = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'
    resp = finish_response(
        ChatResponse(model="m", message=Message(role="assistant", content=text)), req
    )
    assert resp.finish_reason == "tool_calls" and resp.message.content is None
    assert resp.message.tool_calls is not None

    async def events(pieces: list[str]) -> AsyncIterator[StreamEvent]:
        for p in pieces:
            yield StreamEvent(text=p)
        yield StreamEvent(finish_reason="stop", model="m")

    streamed = await collect(finish_stream(events([text[:20], text[20:]]), req), model="m")
    assert streamed.finish_reason == "tool_calls"
    assert streamed.message.tool_calls is not None
    assert json.loads(streamed.message.tool_calls[0].function["arguments"]) == {"city": "Paris"}
    plain = await collect(finish_stream(events(["It is ", "sunny."]), req), model="m")
    assert plain.text == "It is sunny." and plain.finish_reason == "stop"


# ------------------------------------------------------------------ the real tiny model


@pytest.fixture(scope="module")
def smollm2() -> Iterator[Any]:
    from conftest import SMOLLM2
    from tierlm.backends.llama_cpp import LlamaCppBackend
    from tierlm.config.backends import LlamaCppConfig

    backend = LlamaCppBackend(
        LlamaCppConfig(name="tiny", model=str(SMOLLM2), n_ctx=1024, threads=2)
    )
    yield backend
    backend.unload()


GET_WEATHER = {
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


@pytest.mark.slow
async def test_smollm2_returns_openai_tool_calls(smollm2: Any) -> None:
    """The 135M model has no native tools; prompt + JSON-schema grammar give valid calls."""
    req = ChatRequest.from_prompt(
        "What is the weather in Paris right now?",
        tools=[GET_WEATHER],
        tool_choice="required",
        temperature=0,
        seed=1,
        max_tokens=40,
    )
    resp = await smollm2.complete(req)
    assert resp.finish_reason == "tool_calls" and resp.message.content is None
    assert resp.message.tool_calls is not None
    call = resp.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function["name"] == "get_weather"
    args = json.loads(call.function["arguments"])
    assert isinstance(args["city"], str) and args["city"]
    events = [ev async for ev in smollm2.stream(req)]
    assert events[-1].finish_reason == "tool_calls"
    deltas = [d for ev in events for d in ev.tool_calls or []]
    assert deltas[0]["index"] == 0 and deltas[0]["function"]["name"] == "get_weather"
    assert json.loads(deltas[0]["function"]["arguments"]) == args  # same greedy answer


@pytest.mark.slow
async def test_smollm2_auto_choice_may_answer_in_text(smollm2: Any) -> None:
    """With ``auto`` the grammar also allows {"answer": ...}; either way the reply is a
    well-formed OpenAI message (a valid call, or plain text without JSON)."""
    req = ChatRequest.from_prompt(
        "Say hello to me.", tools=[GET_WEATHER], temperature=0, seed=1, max_tokens=40
    )
    resp = await smollm2.complete(req)
    if resp.message.tool_calls:
        assert resp.finish_reason == "tool_calls"
        assert resp.message.tool_calls[0].function["name"] == "get_weather"
    else:
        assert resp.text and not resp.text.lstrip().startswith("{")
