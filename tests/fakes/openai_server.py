"""A local server for the OpenAI ``/v1/chat/completions`` wire format's failure modes.

The request's ``model`` names the scenario (see ``ERRORS`` and the stream scenarios below),
so one server covers every documented error of OpenAI, vLLM and llama.cpp's servers. The last
request (headers and body) is kept in ``app.state.requests`` for assertions. ``/v1/embeddings``
answers with vectors derived from the inputs' bytes (recorded the same way).

The ``gated`` scenario answers (non-stream), or sends its first chunk and then the rest
(stream), only once the test sets ``app.state.gate`` (a ``threading.Event``): a test waits on
what it controls instead of racing a fixed delay.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def _openai(message: str, type_: str, code: str | int | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


# scenario -> (status, body, headers)
ERRORS: dict[str, tuple[int, Any, dict[str, str]]] = {
    "ctx-openai": (
        400,
        _openai(
            "This model's maximum context length is 8192 tokens. However, "
            "your messages resulted in 9000 tokens.",
            "invalid_request_error",
            "context_length_exceeded",
        ),
        {},
    ),
    "ctx-vllm": (
        400,
        {
            "object": "error",
            "message": "This model's maximum context length is "
            "4096 tokens. However, you requested 5000 tokens (4000 in the messages, "
            "1000 in the completion).",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        },
        {},
    ),
    "ctx-llamacpp": (
        400,
        {
            "error": {
                "code": 400,
                "message": "the request exceeds the available context size, try increasing it",
                "type": "exceed_context_size_error",
                "n_prompt_tokens": 5000,
                "n_ctx": 4096,
            }
        },
        {},
    ),
    "policy": (
        400,
        _openai(
            "Your request was rejected as a result of our safety system.",
            "invalid_request_error",
            "content_policy_violation",
        ),
        {},
    ),
    "badreq": (400, _openai("Invalid value for 'temperature'.", "invalid_request_error", None), {}),
    "auth": (
        401,
        _openai("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
        {},
    ),
    "forbidden": (
        403,
        _openai(
            "Country, region, or territory not supported",
            "request_forbidden",
            "unsupported_country_region_territory",
        ),
        {},
    ),
    "notfound": (
        404,
        _openai(
            "The model `gpt-9` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
        ),
        {},
    ),
    "ratelimit-s": (
        429,
        _openai("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
        {"retry-after": "7"},
    ),
    "ratelimit-ms": (
        429,
        _openai("Rate limit reached for tokens", "tokens", "rate_limit_exceeded"),
        {"retry-after-ms": "1500", "retry-after": "2"},
    ),
    "ratelimit-none": (429, _openai("Rate limit reached", "requests", "rate_limit_exceeded"), {}),
    "quota": (
        429,
        _openai(
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            "insufficient_quota",
        ),
        {},
    ),
    "unprocessable": (
        422,
        {
            "detail": [
                {
                    "type": "missing",
                    "loc": ["body", "messages"],
                    "msg": "Field required",
                    "input": {"secret": "TOPSECRET-INPUT"},
                }
            ]
        },
        {},
    ),
    "server": (
        500,
        _openai("The server had an error while processing your request.", "server_error", None),
        {},
    ),
    "badgateway": (502, "<html>502 Bad Gateway</html>", {}),
    "unavailable": (
        503,
        _openai("The engine is currently overloaded, please try again later", "server_error", None),
        {},
    ),
    "gwtimeout": (504, "upstream timed out", {}),
}


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> str:
    data = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return "data: " + json.dumps(data) + "\n\n"


async def _opened(gate: threading.Event) -> None:
    # a threading.Event set by the test thread; polled, so cancelling the request still works
    while not gate.is_set():  # noqa: ASYNC110 - polling another thread's event
        await asyncio.sleep(0.01)


async def _stream(scenario: str, served: str, gate: threading.Event) -> AsyncIterator[str]:
    if scenario == "slow-first":
        await asyncio.sleep(2.0)
    yield _chunk(served, {"role": "assistant"})
    yield _chunk(served, {"content": "Hel"})
    if scenario == "stall":
        await asyncio.sleep(2.0)
    if scenario == "gated":
        await _opened(gate)
    if scenario == "sse-malformed":
        yield 'data: {"choices": [\n\n'
        return
    if scenario == "sse-error":
        yield "data: " + json.dumps({"error": {"message": "overloaded", "code": 503}}) + "\n\n"
        return
    yield _chunk(served, {"content": "lo"})
    if scenario == "sse-truncated":
        return
    if scenario == "sse-tools":
        yield _chunk(
            served,
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            },
        )
        yield _chunk(served, {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]})
        yield _chunk(
            served, {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}
        )
        yield _chunk(served, {}, "tool_calls")
    else:
        yield _chunk(served, {}, "stop")
    usage = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": served,
        "choices": [],
        "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13},
    }
    yield "data: " + json.dumps(usage) + "\n\n"
    if scenario != "sse-no-done":
        yield "data: [DONE]\n\n"


async def chat(request: Request) -> Response:
    raw = await request.body()
    request.app.state.raw.append(raw)
    body = json.loads(raw)
    request.app.state.requests.append({"headers": dict(request.headers), "body": body})
    scenario = str(body.get("model", ""))
    served = scenario + "-2024-08-06"  # the upstream names the exact model that answered
    if scenario in ERRORS:
        status, payload, headers = ERRORS[scenario]
        if scenario == "ratelimit-date":
            headers = {"retry-after": formatdate(time.time() + 30, usegmt=True)}
        if isinstance(payload, str):
            return Response(payload, status_code=status, headers=headers, media_type="text/plain")
        return JSONResponse(payload, status_code=status, headers=headers)
    if scenario == "ratelimit-date":
        return JSONResponse(
            _openai("slow down", "requests", None),
            status_code=429,
            headers={"retry-after": formatdate(time.time() + 30, usegmt=True)},
        )
    if scenario == "malformed":
        return Response("{not json", media_type="application/json")
    if scenario == "embedded-error":
        return JSONResponse({"error": {"message": "model overloaded", "code": 503}})
    if body.get("stream"):
        return StreamingResponse(
            _stream(scenario, served, request.app.state.gate), media_type="text/event-stream"
        )
    if scenario == "slow-first":
        await asyncio.sleep(2.0)
    if scenario == "gated":
        await _opened(request.app.state.gate)
    message: dict[str, Any] = {"role": "assistant", "content": "Hello"}
    finish = "stop"
    if scenario == "tools":
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        }
        finish = "tool_calls"
    return JSONResponse(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1,
            "model": served,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12},
        }
    )


async def embeddings(request: Request) -> Response:
    """``/v1/embeddings``: 8-dimension vectors derived from each input's hash (the model
    ``embed-down`` answers 503); the exact body is recorded in ``app.state.raw``."""
    raw = await request.body()
    request.app.state.raw.append(raw)
    body = json.loads(raw)
    request.app.state.requests.append({"headers": dict(request.headers), "body": body})
    if body.get("model") == "embed-down":
        return JSONResponse(_openai("overloaded", "server_error", None), status_code=503)
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = [
        {"object": "embedding", "index": i, "embedding": [b / 255 for b in t.encode()[:8].ljust(8)]}
        for i, t in enumerate(texts)
    ]
    tokens = sum(len(t.split()) for t in texts)
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": "served-model", "object": "model"}]})


async def metrics(request: Request) -> Response:
    text = (
        "# HELP vllm:num_requests_running Number of requests running\n"
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{model_name="served-model"} 3.0\n'
        'vllm:num_requests_waiting{model_name="served-model"} 5.0\n'
    )
    return Response(text, media_type="text/plain")


def make_app() -> Starlette:
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models),
            Route("/metrics", metrics),
        ]
    )
    app.state.requests = []
    app.state.raw = []  # the exact request bodies, in order
    app.state.gate = threading.Event()
    return app
