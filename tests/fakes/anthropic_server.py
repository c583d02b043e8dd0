"""A local server implementing the Anthropic Messages wire format (``POST /v1/messages``).

Documented behaviour it follows: ``x-api-key`` and ``anthropic-version`` headers are required;
``model``, ``max_tokens`` and alternating ``user``/``assistant`` ``messages`` are required;
answers are Message objects with ``text``/``tool_use`` content blocks, ``stop_reason`` and
``usage``; ``stream: true`` answers server-sent events ``message_start``,
``content_block_start``, ``content_block_delta`` (``text_delta``, ``input_json_delta``),
``content_block_stop``, ``message_delta``, ``message_stop``, ``ping`` and ``error``; errors
are ``{"type": "error", "error": {"type": ..., "message": ...}}`` with their statuses.

The "model" is an echo: it answers ``You said: <last user text>`` (one token per word), or,
when tools are given and the user mentions the weather, calls the first tool with
``{"city": "Paris"}``. A ``model`` of ``err-<type>`` answers that documented error;
``stream-overloaded`` and ``stream-truncated`` break a stream. Requests are kept in
``app.state.requests``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ERRORS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def error(
    status: int, etype: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"type": "error", "error": {"type": etype, "message": message}},
        status_code=status,
        headers=headers,
    )


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for b in content:
        if b.get("type") == "text":
            parts.append(b["text"])
        elif b.get("type") == "tool_result":
            c = b.get("content")
            parts.append("Tool said: " + (c if isinstance(c, str) else _text_of(c or [])))
    return " ".join(parts)


def _authenticated(headers: Any) -> bool:
    """``x-api-key`` (the documented header) or ``Authorization: Bearer`` (newer SDKs)."""
    bearer = str(headers.get("authorization", ""))
    return bool(headers.get("x-api-key")) or (bearer.startswith("Bearer ") and len(bearer) > 7)


def _validate(headers: Any, body: Any) -> JSONResponse | None:
    if not _authenticated(headers):
        return error(401, "authentication_error", "x-api-key header is required")
    if not headers.get("anthropic-version"):
        return error(400, "invalid_request_error", "anthropic-version header is required")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return error(400, "invalid_request_error", "model: Field required")
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return error(400, "invalid_request_error", "max_tokens: Field required")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return error(400, "invalid_request_error", "messages: at least one message is required")
    for i, m in enumerate(msgs):
        want = "user" if i % 2 == 0 else "assistant"
        if m.get("role") != want:
            return error(
                400,
                "invalid_request_error",
                f"messages: roles must alternate between user and assistant ({i})",
            )
    t = body.get("temperature")
    if t is not None and not 0 <= t <= 1:
        return error(400, "invalid_request_error", "temperature: must be between 0 and 1")
    return None


def _answer(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str, int, int]:
    """(content blocks, stop_reason, input tokens, output tokens)."""
    words_in = len(str(body.get("system", "")).split()) + sum(
        len(_text_of(m["content"]).split()) for m in body["messages"]
    )
    last = _text_of(body["messages"][-1]["content"])
    tools = body.get("tools") or []
    choice = (body.get("tool_choice") or {}).get("type", "auto")
    if tools and choice != "none" and ("weather" in last.lower() or choice in ("any", "tool")):
        name = body["tool_choice"]["name"] if choice == "tool" else tools[0]["name"]
        blocks = [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01A", "name": name, "input": {"city": "Paris"}},
        ]
        return blocks, "tool_use", words_in, 8
    words = ("You said: " + last).split()
    stop = "end_turn"
    if len(words) > body["max_tokens"]:
        words, stop = words[: body["max_tokens"]], "max_tokens"
    return [{"type": "text", "text": " ".join(words)}], stop, words_in, len(words)


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _events(body: dict[str, Any], model: str) -> Iterator[str]:
    blocks, stop, n_in, n_out = _answer(body)
    yield _sse(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": n_in, "output_tokens": 1},
            },
        },
    )
    for i, block in enumerate(blocks):
        if block["type"] == "text":
            yield _sse(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": i,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            yield _sse("ping", {"type": "ping"})
            words = block["text"].split(" ")
            for j, w in enumerate(words):
                piece = w if j == 0 else " " + w
                yield _sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": i,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
                if j == 1 and body["model"] == "stream-overloaded":
                    yield _sse(
                        "error",
                        {
                            "type": "error",
                            "error": {"type": "overloaded_error", "message": "Overloaded"},
                        },
                    )
                    return
        else:
            yield _sse(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": i,
                    "content_block": {
                        "type": "tool_use",
                        "id": block["id"],
                        "name": block["name"],
                        "input": {},
                    },
                },
            )
            raw = json.dumps(block["input"])
            for piece in (raw[:5], raw[5:]):
                yield _sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": i,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    },
                )
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": i})
    yield _sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": n_out},
        },
    )
    if body["model"] == "stream-truncated":
        return
    yield _sse("message_stop", {"type": "message_stop"})


async def messages(request: Request) -> Response:
    raw = await request.body()
    request.app.state.raw.append(raw)
    try:
        body = json.loads(raw)
    except ValueError:
        return error(400, "invalid_request_error", "body is not valid JSON")
    request.app.state.requests.append({"headers": dict(request.headers), "body": body})
    bad = _validate(request.headers, body)
    if bad is not None:
        return bad
    model = body["model"]
    if model.startswith("err-"):
        etype = model[4:]
        if etype == "context":
            return error(
                400, "invalid_request_error", "prompt is too long: 250000 tokens > 200000 maximum"
            )
        headers = {"retry-after": "12"} if etype == "rate_limit_error" else None
        return error(ERRORS[etype], etype, f"fake {etype}", headers)
    served = model + "-20241022"  # the upstream names the exact model that answered
    if body.get("stream"):
        return StreamingResponse(_events(body, served), media_type="text/event-stream")
    blocks, stop, n_in, n_out = _answer(body)
    return JSONResponse(
        {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": served,
            "content": blocks,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": n_in, "output_tokens": n_out},
        }
    )


async def models(request: Request) -> Response:
    if not _authenticated(request.headers):
        return error(401, "authentication_error", "x-api-key header is required")
    return JSONResponse(
        {
            "data": [
                {
                    "type": "model",
                    "id": "claude-fake",
                    "display_name": "Claude Fake",
                    "created_at": "2025-01-01T00:00:00Z",
                }
            ],
            "has_more": False,
            "first_id": "claude-fake",
            "last_id": "claude-fake",
        }
    )


def make_app() -> Starlette:
    app = Starlette(
        routes=[Route("/v1/messages", messages, methods=["POST"]), Route("/v1/models", models)]
    )
    app.state.requests = []
    app.state.raw = []  # the exact request bodies, in order
    return app
