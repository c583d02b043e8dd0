"""The official ``ollama`` Python client, unchanged, against the gateway's Ollama API: the
tiny tier with the real SmolLM2 model (chat, streaming chat, generate, list), and the fake
OpenAI-wire upstream for tool calls in Ollama's shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pytest

from conftest import MODELS
from fakes import serve
from fakes.openai_server import make_app
from server_util import serve_gateway, settings, upstream_backend

MSG = [{"role": "user", "content": "Say hello."}]
OPTS = {"num_predict": 12, "temperature": 0.2}


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    with serve(make_app()) as url:
        s = settings(
            [
                {
                    "name": "smollm2",
                    "kind": "llama_cpp",
                    "model": "smollm2-135m-instruct",
                    "options": {"repeat_penalty": 1.1},
                    "threads": 2,
                },
                upstream_backend("tools", url, "tools"),
                upstream_backend("ssetools", url, "sse-tools"),
            ],
            [
                {"name": "tiny", "backends": ["smollm2"]},
                {"name": "site", "backends": ["tools", "ssetools"]},
            ],
            models_dir=str(MODELS),
        )
        with serve_gateway(s) as base:
            yield base


@pytest.fixture
def client(gateway: str) -> Iterator[ollama.Client]:
    with ollama.Client(host=gateway, timeout=120) as c:
        yield c


def test_list(client: ollama.Client) -> None:
    names = [m.model for m in client.list().models]
    assert names[0] == "auto"
    assert {"tiny", "site", "smollm2", "tools", "ssetools"} <= set(names)


@pytest.mark.slow  # the real tiny model answers
def test_chat(client: ollama.Client) -> None:
    r = client.chat(model="auto", messages=MSG, options=OPTS)
    assert r.done is True and r.done_reason in ("stop", "length")
    assert r.message.role == "assistant" and r.message.content
    assert r.model is not None and "smollm2" in r.model.lower()
    assert r.eval_count and r.eval_count > 0 and r.prompt_eval_count
    assert r.total_duration and r.total_duration > 0
    assert r.created_at


@pytest.mark.slow  # the real tiny model answers
def test_streaming_chat(client: ollama.Client) -> None:
    parts = list(client.chat(model="tiny", messages=MSG, options=OPTS, stream=True))
    assert len(parts) >= 2
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content or "" for p in parts).strip()
    assert parts[-1].eval_count and parts[-1].done_reason in ("stop", "length")


@pytest.mark.slow  # the real tiny model answers
def test_generate(client: ollama.Client) -> None:
    r = client.generate(
        model="smollm2:latest", prompt="Once upon a time", options=OPTS, system="You tell stories."
    )
    assert r.done and r.response
    parts = list(client.generate(model="auto", prompt="Hello", options=OPTS, stream=True))
    assert parts[-1].done and "".join(p.response or "" for p in parts[:-1]).strip()


def test_tool_calls_in_ollama_shape(client: ollama.Client) -> None:
    tool: Any = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    r = client.chat(
        model="tools", messages=[{"role": "user", "content": "Paris?"}], tools=[tool], stream=False
    )
    call = r.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"
    assert dict(call.function.arguments) == {"city": "Paris"}
    parts = list(
        client.chat(
            model="ssetools",
            messages=[{"role": "user", "content": "Paris?"}],
            tools=[tool],
            stream=True,
        )
    )
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert len(calls) == 1 and dict(calls[0].function.arguments) == {"city": "Paris"}
    assert parts[-1].done


def test_unknown_model_is_an_ollama_error(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="llama9", messages=MSG)
    assert e.value.status_code == 404 and "llama9" in e.value.error


def test_routing_headers_and_version(gateway: str) -> None:
    r = httpx.post(
        gateway + "/api/chat", json={"model": "tools", "stream": False, "messages": MSG}, timeout=30
    )
    assert r.headers["x-tierlm-tier"] == "site" and r.headers["x-tierlm-backend"] == "tools"
    assert r.json()["tierlm"]["backend"] == "tools"
    assert httpx.get(gateway + "/api/version").json()["version"]
    show = httpx.post(gateway + "/api/show", json={"model": "tiny"}).json()
    assert "completion" in show["capabilities"]
