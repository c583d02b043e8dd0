"""The official ``anthropic`` SDK, unchanged, against ``POST /v1/messages`` (issue 14): the real
app under uvicorn on 127.0.0.1, API keys on (the SDK sends ``x-api-key``), in front of the
recording fake OpenAI-wire upstreams. Whole and streamed answers, a tool call round trip,
the translation the upstream receives, privacy over every translated field, and
Anthropic-shaped errors for bad input.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import pytest
from starlette.applications import Starlette

from fakes import serve
from fakes.openai_server import make_app
from server_util import USER_KEY, sha, upstream_backend
from server_util import settings as gateway_settings
from test_privacy_forwarding import EMAIL, SECRET
from tierlm.server import create_app

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
HELLO: list[Any] = [{"role": "user", "content": "Say hello."}]


@dataclass
class Rig:
    url: str
    site: Starlette
    cloud: Starlette

    def sent(self) -> dict[str, Any]:
        """The body of the last request the site upstream received."""
        return dict(self.site.state.requests[-1]["body"])


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    site, cloud = make_app(), make_app()
    with serve(site) as site_url, serve(cloud) as cloud_url:
        s = gateway_settings(
            [
                upstream_backend("site", site_url, "plain"),
                upstream_backend("tools", site_url, "tools"),
                upstream_backend("ssetools", site_url, "sse-tools"),
                upstream_backend("cloud", cloud_url, "gpt", boundary="external", api_key="sk-0"),
            ],
            [
                {"name": "site", "backends": ["site"]},
                {"name": "toolsite", "backends": ["tools", "ssetools"]},
                {"name": "cloud", "backends": ["cloud"]},
            ],
            server={"api_keys": [{"name": "user", "hash": sha(USER_KEY)}]},
        )
        with serve(create_app(s), lifespan="on", start_within=60, grace=2) as url:
            yield Rig(url, site, cloud)


@pytest.fixture
def client(rig: Rig) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=rig.url, api_key=USER_KEY, max_retries=0, timeout=30) as c:
        yield c


def test_whole_answer_with_system_prompt(rig: Rig, client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(
        model="site",
        max_tokens=64,
        system="Be brief.",
        messages=HELLO,
        extra_body={"temperature": 0.5},
    )
    msg = raw.parse()
    assert raw.headers["x-tierlm-backend"] == "site"
    assert raw.headers["x-tierlm-request-id"].removeprefix("req-") == msg.id.removeprefix("msg_")
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "Hello"  # type: ignore[union-attr]
    assert msg.stop_reason == "end_turn" and msg.role == "assistant"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (11, 1)
    assert msg.model == "plain-2024-08-06"
    sent = rig.sent()
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["messages"][1] == {"role": "user", "content": "Say hello."}
    assert sent["max_tokens"] == 64 and sent["temperature"] == 0.5


def test_streamed_answer(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="site", max_tokens=64, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 2)


def test_stream_events_in_order(rig: Rig) -> None:
    body = {"model": "ssetools", "max_tokens": 64, "messages": HELLO, "stream": True}
    r = httpx.post(rig.url + "/v1/messages", json=body, headers={"x-api-key": USER_KEY})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("event: ") for line in r.text.splitlines() if "event: " in line]
    assert events[0] == "message_start" and events[-2:] == ["message_delta", "message_stop"]
    data = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert [d["type"] for d in data] == events
    starts = [d for d in data if d["type"] == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["text", "tool_use"]
    assert events.count("content_block_start") == events.count("content_block_stop") == 2


def test_tool_call_round_trip(rig: Rig, client: anthropic.Anthropic) -> None:
    first = client.messages.create(
        model="tools",
        max_tokens=64,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert first.stop_reason == "tool_use"
    use = first.content[-1]
    assert use.type == "tool_use" and use.name == "get_weather"
    assert use.input == {"city": "Paris"}
    sent = rig.sent()
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city.",
                "parameters": WEATHER["input_schema"],
            },
        }
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    second = client.messages.create(
        model="site",
        max_tokens=64,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": use.id, "content": "18 C, sunny"},
                    {"type": "text", "text": "Answer briefly."},
                ],
            },
        ],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert second.content[0].text == "Hello"  # type: ignore[union-attr]
    msgs = rig.sent()["messages"]
    assert msgs[1]["role"] == "assistant"
    call = msgs[1]["tool_calls"][0]
    assert call["id"] == use.id and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert msgs[2] == {"role": "tool", "tool_call_id": use.id, "content": "18 C, sunny"}
    assert msgs[3]["role"] == "user"
    assert msgs[3]["content"] == [{"type": "text", "text": "Answer briefly."}]


def test_streamed_tool_call(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="ssetools",
        max_tokens=64,
        messages=HELLO,
        tools=[WEATHER],  # type: ignore[list-item]
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["text", "tool_use"]
    use = final.content[1]
    assert use.type == "tool_use" and use.id == "call_1" and use.input == {"city": "Paris"}


def test_image_block_becomes_an_image_part(rig: Rig, client: anthropic.Anthropic) -> None:
    source = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    client.messages.create(
        model="site",
        max_tokens=16,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": source},  # type: ignore[typeddict-item]
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    )
    part = rig.sent()["messages"][0]["content"][0]
    assert part == {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


# -- privacy: every translated text is scanned ---------------------------------------------------
def _tool_result(text: str) -> list[Any]:
    return [
        {"role": "user", "content": "Look the customer up."},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {"q": "x"}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": text}],
        },
    ]


PRIVATE_FIELDS: dict[str, dict[str, Any]] = {
    "system": {"system": [{"type": "text", "text": SECRET}]},
    "text block": {"messages": [{"role": "user", "content": [{"type": "text", "text": SECRET}]}]},
    "tool_result": {"messages": _tool_result(SECRET)},
    "tool_use.input": {
        "messages": [
            {"role": "user", "content": "Look the customer up."},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"q": EMAIL}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
        ]
    },
    "tool description": {"tools": [{**WEATHER, "description": SECRET}]},
    "metadata.user_id": {"metadata": {"user_id": EMAIL}},
    "stop_sequences": {"stop_sequences": [SECRET]},
}


def _routed(rig: Rig, **fields: Any) -> httpx.Response:
    body = {"model": "auto", "max_tokens": 16, "messages": HELLO, **fields}
    headers = {"x-api-key": USER_KEY, "x-tierlm-optimize": "quality"}
    rig.cloud.state.requests.clear()
    return httpx.post(rig.url + "/v1/messages", json=body, headers=headers, timeout=30)


def test_a_plain_request_may_reach_the_cloud(rig: Rig) -> None:
    r = _routed(rig)
    assert r.status_code == 200 and r.headers["x-tierlm-backend"] == "cloud"
    assert len(rig.cloud.state.requests) == 1


@pytest.mark.parametrize("field", sorted(PRIVATE_FIELDS))
def test_a_secret_in_any_field_stays_on_site(rig: Rig, field: str) -> None:
    r = _routed(rig, **PRIVATE_FIELDS[field])
    assert r.status_code == 200, r.text
    assert r.headers["x-tierlm-privacy"] == "private"
    assert r.headers["x-tierlm-boundary"] == "site"
    assert rig.cloud.state.requests == []


# -- errors ------------------------------------------------------------------------------------
def test_sdk_errors_are_anthropic_shaped(rig: Rig, client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as nf:
        client.messages.create(model="claude-nonexistent", max_tokens=16, messages=HELLO)
    assert nf.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    bad = anthropic.Anthropic(base_url=rig.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as auth:
        bad.messages.create(model="site", max_tokens=16, messages=HELLO)
    assert auth.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    bad.close()


BAD_BODIES: dict[str, tuple[Any, str]] = {
    "not an object": ([1, 2], "request body"),
    "no messages": ({"model": "site", "max_tokens": 5}, "messages"),
    "bad role": ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    "unknown block": (
        {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
        "messages[0].content[0]",
    ),
    "tool_use from the user": (
        {"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b"}]}]},
        "messages[0].content[0]",
    ),
    "image without source": (
        {"messages": [{"role": "user", "content": [{"type": "image"}]}]},
        "messages[0].content[0].source",
    ),
    "server tool": (
        {"messages": HELLO, "tools": [{"type": "web_search", "name": "w"}]},
        "tools[0]",
    ),
    "bad tool_choice": ({"messages": HELLO, "tool_choice": {"type": "maybe"}}, "tool_choice.type"),
    "unknown field": ({"messages": HELLO, "container": "x"}, "container"),
    "max_tokens 0": ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
    "text not a string": (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
        "messages[0].content[0].text",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_input_is_a_400_naming_the_field(rig: Rig, case: str) -> None:
    body, field = BAD_BODIES[case]
    r = httpx.post(rig.url + "/v1/messages", json=body, headers={"x-api-key": USER_KEY})
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert err["error"]["message"].startswith(field)


def test_edge_errors_are_anthropic_shaped(rig: Rig) -> None:
    r = httpx.post(rig.url + "/v1/messages", content=b"{nope", headers={"x-api-key": USER_KEY})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.get(rig.url + "/v1/messages", headers={"x-api-key": USER_KEY})
    assert r.status_code == 405 and r.json()["type"] == "error"
    r = httpx.post(rig.url + "/v1/messages", json={"messages": HELLO})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
