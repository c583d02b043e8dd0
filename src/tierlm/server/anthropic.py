"""Anthropic's Messages API inbound: ``POST /v1/messages``, so the unchanged ``anthropic``
SDK can use tierlm, routed like any other request (privacy, keys, budgets, rate limits,
ledger, ``x-tierlm-*`` headers).

The key comes as ``x-api-key`` (or ``Authorization: Bearer``), the same keys either way;
``anthropic-version`` and ``anthropic-beta`` are accepted and not interpreted. The body maps
onto one :class:`~tierlm.types.ChatRequest`:

- ``model`` as on ``/v1/chat/completions`` (``auto``, a tier, a backend or its model id);
  ``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``stop_sequences`` (-> ``stop``),
  ``stream``; ``metadata.user_id`` -> ``user``; ``thinking`` is passed on; routing hints from
  a ``tierlm`` object and ``x-tierlm-*`` headers;
- ``system`` (text or text blocks) -> a system message;
- content blocks: ``text`` -> a text part; ``image`` (``base64`` or ``url`` source) -> an
  ``image_url`` part (a ``data:`` URL for base64, forwarded unread as on the OpenAI route);
  ``tool_use`` (assistant) -> a tool call, ``input`` as its JSON arguments; ``tool_result``
  (user) -> a ``tool`` message (text content only) placed before the rest of that turn;
- ``tools`` (``name``, ``description``, ``input_schema``) -> function tools; ``tool_choice``
  ``auto``/``any``/``tool``/``none`` -> ``auto``/``required``/the function/``none``;
  ``disable_parallel_tool_use`` -> ``parallel_tool_calls: false``.

Every text lands in a field the privacy guard scans (message text, tool calls, tools,
``tool_choice``, ``stop``, ``user``). Keys Anthropic uses for caching and citations
(``cache_control``, in blocks and at the top level, and ``citations``) are dropped; any
other block type, server tool or unknown top-level field is refused with a 400 naming it.

Answers: a ``message`` with ``text`` and ``tool_use`` content blocks, ``stop_reason``
(``end_turn``, ``max_tokens``, ``tool_use``, ``refusal``; a matched stop sequence is
``end_turn`` with ``stop_sequence: null``, as backends do not say which matched), ``usage``
(``input_tokens``, ``output_tokens``) and a ``tierlm`` object; streamed as Anthropic's SSE
events (``message_start`` with zero usage, ``content_block_start``/``_delta``/``_stop``,
``message_delta`` with the stop reason and the whole usage, ``message_stop``). Errors are
Anthropic-shaped, ``{"type": "error", "error": {"type", "message"}}``, with the right
status; a failure after the stream committed ends it with an ``error`` event, never
``message_stop``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from tierlm.errors import TierlmError
from tierlm.server.gateway import (
    FieldError,
    Gateway,
    WireFormat,
    chat_request,
    dumps,
    error_headers,
    header_hints,
    json_response,
)
from tierlm.server.streaming import StreamEnd, chain, unfinished
from tierlm.types import Usage

if TYPE_CHECKING:
    from tierlm.execute.streams import RoutedStream
    from tierlm.types import ChatRequest, ChatResponse, Plan, StreamEvent

ROUTE = "/v1/messages"
_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "tools",
        "tool_choice",
        "metadata",
        "thinking",
        "tierlm",
        "cache_control",
    }
)
_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "error": "end_turn",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def error_body(status: int, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message},
    }


def anthropic_error(e: TierlmError, headers: dict[str, str] | None = None) -> Response:
    """An Anthropic-shaped error with the error's status (and retry headers)."""
    return json_response(error_body(e.status, e.message), e.status, error_headers(e, headers))


# -- the request ------------------------------------------------------------------------------
def _obj(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FieldError(f"{param}: must be an object", param)
    return value


def _text(block: dict[str, Any], param: str) -> dict[str, Any]:
    if not isinstance(block.get("text"), str):
        raise FieldError(f"{param}.text: must be a string", f"{param}.text")
    return {"type": "text", "text": block["text"]}


def _image(block: dict[str, Any], param: str) -> dict[str, Any]:
    src = _obj(block.get("source"), f"{param}.source")
    kind = src.get("type")
    if kind == "base64" and isinstance(src.get("data"), str):
        media = src.get("media_type")
        if not isinstance(media, str) or not media.startswith("image/"):
            raise FieldError(f"{param}.source.media_type: must be an image type", param)
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{src['data']}"}}
    if kind == "url" and isinstance(src.get("url"), str):
        return {"type": "image_url", "image_url": {"url": src["url"]}}
    raise FieldError(
        f"{param}.source: must be a base64 source with data or a url source", f"{param}.source"
    )


def _tool_result(block: dict[str, Any], param: str) -> dict[str, Any]:
    cid = block.get("tool_use_id")
    if not isinstance(cid, str) or not cid:
        raise FieldError(f"{param}.tool_use_id: must be a string", f"{param}.tool_use_id")
    content = block.get("content", "")
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            where = f"{param}.content[{j}]"
            if not isinstance(part, dict) or part.get("type") != "text":
                raise FieldError(f"{where}: only text blocks are supported in a tool_result", where)
            texts.append(_text(part, where)["text"])
        content = "\n".join(texts)
    if not isinstance(content, str):
        raise FieldError(f"{param}.content: must be text or text blocks", f"{param}.content")
    if block.get("is_error") is True:
        content = "Error: " + content
    return {"role": "tool", "tool_call_id": cid, "content": content}


def _tool_use(block: dict[str, Any], param: str) -> dict[str, Any]:
    name, cid = block.get("name"), block.get("id")
    if not isinstance(name, str) or not isinstance(cid, str):
        raise FieldError(f"{param}: a tool_use needs a string id and name", param)
    args = json.dumps(_obj(block.get("input", {}), f"{param}.input"), ensure_ascii=False)
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


def _message(m: Any, i: int) -> list[dict[str, Any]]:
    """One Anthropic message as internal messages (tool results first, as their own)."""
    where = f"messages[{i}]"
    m = _obj(m, where)
    role = m.get("role")
    if role not in ("user", "assistant"):
        raise FieldError(f"{where}.role: must be 'user' or 'assistant'", f"{where}.role")
    content = m.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise FieldError(f"{where}.content: must be text or a list of blocks", f"{where}.content")
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        param = f"{where}.content[{j}]"
        kind = _obj(block, param).get("type")
        if kind == "text":
            parts.append(_text(block, param))
        elif kind == "image":
            parts.append(_image(block, param))
        elif kind == "tool_use" and role == "assistant":
            calls.append(_tool_use(block, param))
        elif kind == "tool_result" and role == "user":
            tools.append(_tool_result(block, param))
        else:
            raise FieldError(f"{param}.type: {kind!r} is not supported in a {role} message", param)
    out = list(tools)
    if parts or calls or not tools:
        msg: dict[str, Any] = {"role": role, "content": parts or None}
        if calls:
            msg["tool_calls"] = calls
        out.append(msg)
    return out


def _system(system: Any) -> dict[str, Any]:
    if isinstance(system, str):
        return {"role": "system", "content": system}
    if not isinstance(system, list):
        raise FieldError("system: must be text or a list of text blocks", "system")
    parts = []
    for j, block in enumerate(system):
        param = f"system[{j}]"
        if _obj(block, param).get("type") != "text":
            raise FieldError(f"{param}.type: must be 'text'", f"{param}.type")
        parts.append(_text(block, param))
    return {"role": "system", "content": parts}


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise FieldError("tools: must be a list", "tools")
    out = []
    for i, t in enumerate(tools):
        param = f"tools[{i}]"
        t = _obj(t, param)
        if t.get("type") not in (None, "custom") or not isinstance(t.get("name"), str):
            raise FieldError(f"{param}: only custom tools with a name are supported", param)
        fn: dict[str, Any] = {
            "name": t["name"],
            "parameters": _obj(t.get("input_schema"), f"{param}.input_schema"),
        }
        if isinstance(t.get("description"), str):
            fn["description"] = t["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any, extra: dict[str, Any]) -> str | dict[str, Any]:
    choice = _obj(choice, "tool_choice")
    if choice.get("disable_parallel_tool_use") is True:
        extra["parallel_tool_calls"] = False
    kind = choice.get("type")
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    mapped = {"auto": "auto", "any": "required", "none": "none"}.get(kind)
    if mapped is None:
        raise FieldError(
            "tool_choice.type: must be auto, any, none or tool (with a name)", "tool_choice.type"
        )
    return mapped


def parse_messages(body: Any, request: Request, gw: Gateway) -> ChatRequest:
    """An Anthropic Messages body as a :class:`ChatRequest` (400 naming the field)."""
    body = _obj(body, "request body")
    unknown = sorted(k for k in body if k not in _FIELDS)
    if unknown:
        raise FieldError(f"{unknown[0]}: unknown field (not forwarded)", unknown[0])
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise FieldError("messages: must be a non-empty list", "messages")
    hints = header_hints(request)
    if body.get("tierlm") is not None:
        hints.update(_obj(body["tierlm"], "tierlm"))
    messages = [] if body.get("system") in (None, "", []) else [_system(body["system"])]
    for i, m in enumerate(body["messages"]):
        messages.extend(_message(m, i))
    extra: dict[str, Any] = {}
    if body.get("metadata") is not None:
        user = _obj(body["metadata"], "metadata").get("user_id")
        if user is not None:
            extra["user"] = user
    if body.get("thinking") is not None:
        extra["thinking"] = body["thinking"]
    data: dict[str, Any] = {
        "messages": messages,
        "model": gw.resolve_model(body.get("model")),
        "stream": body.get("stream") or False,
        "max_tokens": body.get("max_tokens"),
        "stop": body.get("stop_sequences"),
        "hints": hints,
        "include_usage": True,
    }
    for k in ("temperature", "top_p", "top_k"):
        if body.get(k) is not None:
            data[k] = body[k]
    if body.get("tools"):
        data["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        data["tool_choice"] = _tool_choice(body["tool_choice"], extra)
    data["extra"] = extra
    return chat_request(data, request)


# -- the answer -------------------------------------------------------------------------------
def _input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {"_raw": arguments}
    return value if isinstance(value, dict) else {"_": value}


def message_body(gw: Gateway, req: ChatRequest, plan: Plan, resp: ChatResponse) -> dict[str, Any]:
    msg = resp.message
    content: list[dict[str, Any]] = []
    if msg.text or not msg.tool_calls:
        content.append({"type": "text", "text": msg.text})
    for c in msg.tool_calls or ():
        fn = c.function
        content.append(
            {
                "type": "tool_use",
                "id": c.id,
                "name": fn.get("name", ""),
                "input": _input(fn.get("arguments", "")),
            }
        )
    return {
        "id": "msg_" + req.request_id.removeprefix("req-"),
        "type": "message",
        "role": "assistant",
        "model": resp.model,
        "content": content,
        "stop_reason": _STOP.get(resp.finish_reason, "end_turn"),
        "stop_sequence": None,
        "usage": _usage(resp.usage),
        "tierlm": gw.tierlm_object(req, plan, resp.tier, resp.backend, resp.cascade),
    }


def _usage(u: Usage) -> dict[str, int]:
    return {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens}


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + dumps({"type": kind, **data}) + b"\n\n"


class _Blocks:
    """Content blocks of a streamed answer: opens, feeds and closes them in order."""

    def __init__(self) -> None:
        self.index = -1
        self.open: str | int | None = None  # "text", a tool call's index, or none

    def close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return _event("content_block_stop", {"index": self.index})

    def start(self, which: str | int, block: dict[str, Any]) -> bytes:
        out = self.close()
        self.index += 1
        self.open = which
        return out + _event("content_block_start", {"index": self.index, "content_block": block})

    def delta(self, delta: dict[str, Any]) -> bytes:
        return _event("content_block_delta", {"index": self.index, "delta": delta})

    def feed(self, ev: StreamEvent) -> bytes:
        out = b""
        if ev.text:
            if self.open != "text":
                out += self.start("text", {"type": "text", "text": ""})
            out += self.delta({"type": "text_delta", "text": ev.text})
        for call in ev.tool_calls or ():
            fn = call.get("function") or {}
            idx = call.get("index", 0)
            if self.open != idx:
                block: dict[str, Any] = {
                    "type": "tool_use",
                    "id": call.get("id") or f"toolu_{idx}",
                    "input": {},
                }
                out += self.start(idx, {**block, "name": fn.get("name") or ""})
            if fn.get("arguments"):
                out += self.delta({"type": "input_json_delta", "partial_json": fn["arguments"]})
        return out


async def _sse(
    req: ChatRequest, rs: RoutedStream, first: StreamEvent, end: StreamEnd
) -> AsyncIterator[bytes]:
    """The committed stream as Anthropic's SSE events; a failure after commit ends it with
    an ``error`` event."""
    message: dict[str, Any] = {
        "id": "msg_" + req.request_id.removeprefix("req-"),
        "type": "message",
        "role": "assistant",
        "model": first.model or rs.model or "",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    pending = _event("message_start", {"message": message})
    blocks = _Blocks()
    try:
        usage: Usage | None = None
        finish: str | None = None
        async for ev in chain(first, rs):
            out = blocks.feed(ev)
            if out:
                yield pending + out
                pending = b""
            usage = ev.usage or usage
            finish = ev.finish_reason or finish
        if finish is None:
            raise unfinished(req, rs)
        delta = {"stop_reason": _STOP.get(finish, "end_turn"), "stop_sequence": None}
        tail = pending + blocks.close()
        tail += _event("message_delta", {"delta": delta, "usage": _usage(usage or Usage())})
        yield tail + _event("message_stop", {})
    except Exception as e:  # any failure (logged with its cause) ends it with an error event
        err = end.fail(e, req)
        yield pending + _event("error", {"error": error_body(err.status, err.message)["error"]})
    finally:
        await end()


class _Anthropic(WireFormat):
    route = ROUTE
    media_type = "text/event-stream"
    stream_headers = _SSE_HEADERS

    def parse(self, body: Any, request: Request, gw: Gateway) -> ChatRequest:
        return parse_messages(body, request, gw)

    def error(self, e: TierlmError, headers: dict[str, str] | None) -> Response:
        return anthropic_error(e, headers)

    def whole(
        self, gw: Gateway, req: ChatRequest, plan: Plan, resp: ChatResponse, started: float
    ) -> dict[str, Any]:
        return message_body(gw, req, plan, resp)

    def stream(
        self, req: ChatRequest, rs: RoutedStream, first: StreamEvent, end: StreamEnd
    ) -> AsyncIterator[bytes]:
        return _sse(req, rs, first, end)


messages = _Anthropic().handle
