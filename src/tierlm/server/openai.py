"""The OpenAI wire format: ``POST /v1/chat/completions`` and ``GET /v1/models``.

The body maps onto one :class:`~tierlm.types.ChatRequest`: ``model`` is ``auto`` (route) or
a tier, backend or backend model id (pin); ``max_completion_tokens`` wins over
``max_tokens``; ``stop`` may be a string or a list; ``stream_options.include_usage`` asks for
the usage chunk; routing hints come from a ``tierlm`` body object and ``x-tierlm-*`` headers
(the body wins); the other fields tierlm knows (:data:`~tierlm.types.PASS_ON_FIELDS`) are
kept in ``extra`` and passed on to backends whose wire format has them, scanned like the
messages; a field it does not know is refused with a 400 that names it. Message keys other
than ``role``, ``content``, ``name``, ``tool_calls`` and ``tool_call_id`` are dropped.

Answers are in OpenAI's exact shape, plus a ``tierlm`` object (non-streaming) and
``x-tierlm-*`` headers. A stream's headers are sent only once it has committed to a backend,
so they name the backend that really answers; a failure after that ends the stream with an
in-band ``data: {"error": ...}`` event and never with a normal finish or ``[DONE]``.
"""

from __future__ import annotations

import time
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
    error_response,
    header_hints,
    json_response,
)
from tierlm.server.streaming import StreamEnd, chain, unfinished
from tierlm.types import PASS_ON_FIELDS, Usage

if TYPE_CHECKING:
    from tierlm.execute.streams import RoutedStream
    from tierlm.types import ChatRequest, ChatResponse, Plan, StreamEvent

ROUTE = "/v1/chat/completions"
_MAPPED = {
    "messages",
    "model",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "stream_options",
    "tierlm",
    "n",
}
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def parse_chat(body: Any, request: Request, gw: Gateway) -> ChatRequest:
    """An OpenAI chat body as a :class:`ChatRequest` (400 naming the field when it is bad)."""
    if not isinstance(body, dict):
        raise FieldError("request body must be a JSON object")
    if "messages" not in body:
        raise FieldError("messages: field required", "messages")
    unknown = sorted(k for k in body if k not in _MAPPED and k not in PASS_ON_FIELDS)
    if unknown:
        raise FieldError(f"{unknown[0]}: unknown field (not forwarded)", unknown[0])
    n = body.get("n")
    if n is not None and (type(n) is not int or n != 1):
        raise FieldError("n: only one choice per request is supported", "n")
    hints = header_hints(request)
    body_hints = body.get("tierlm")
    if body_hints is not None:
        if not isinstance(body_hints, dict):
            raise FieldError("tierlm: must be an object of routing hints", "tierlm")
        hints.update(body_hints)
    stop = body.get("stop")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise FieldError("stream_options: must be an object", "stream_options")
    data: dict[str, Any] = {
        "messages": body["messages"],
        "model": gw.resolve_model(body.get("model")),
        "stream": body.get("stream") or False,
        "max_tokens": body.get("max_completion_tokens", body.get("max_tokens")),
        "stop": [stop] if isinstance(stop, str) else stop,
        "include_usage": bool(options and options.get("include_usage")),
        "hints": hints,
        "extra": {k: v for k, v in body.items() if k not in _MAPPED},
    }
    for k in ("temperature", "top_p", "top_k", "seed", "tools", "tool_choice"):
        if body.get(k) is not None:
            data[k] = body[k]
    return chat_request(data, request)


class _OpenAI(WireFormat):
    route = ROUTE
    media_type = "text/event-stream"
    stream_headers = _SSE_HEADERS

    def parse(self, body: Any, request: Request, gw: Gateway) -> ChatRequest:
        return parse_chat(body, request, gw)

    def error(self, e: TierlmError, headers: dict[str, str] | None) -> Response:
        return error_response(e, headers)

    def whole(
        self, gw: Gateway, req: ChatRequest, plan: Plan, resp: ChatResponse, started: float
    ) -> dict[str, Any]:
        return completion_body(gw, req, plan, resp)

    def stream(
        self, req: ChatRequest, rs: RoutedStream, first: StreamEvent, end: StreamEnd
    ) -> AsyncIterator[bytes]:
        return _sse(req, rs, first, end)


chat_completions = _OpenAI().handle


def completion_body(
    gw: Gateway,
    req: ChatRequest,
    plan: Plan,
    resp: ChatResponse,
) -> dict[str, Any]:
    msg = resp.message
    message: dict[str, Any] = {
        "role": "assistant",
        "content": msg.content if msg.content is not None or not msg.tool_calls else None,
        "refusal": None,
    }
    if msg.tool_calls:
        message["tool_calls"] = [c.model_dump(exclude_none=True) for c in msg.tool_calls]
    return {
        "id": resp.id,
        "object": "chat.completion",
        "created": resp.created,
        "model": resp.model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": resp.finish_reason}
        ],
        "usage": resp.usage.to_openai(),
        "system_fingerprint": None,
        "tierlm": gw.tierlm_object(req, plan, resp.tier, resp.backend, resp.cascade),
    }


async def _sse(
    req: ChatRequest, rs: RoutedStream, first: StreamEvent, end: StreamEnd
) -> AsyncIterator[bytes]:
    """The committed stream as SSE; an error after commit ends it with an in-band error."""
    head = {
        "id": "chatcmpl-" + req.request_id.removeprefix("req-"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": first.model or rs.model or "",
        "system_fingerprint": None,
    }
    if req.include_usage:
        head["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + dumps({**head, "choices": [choice]}) + b"\n\n"

    # Pieces that are ready together go out in one write: the role chunk with the first
    # piece, and the finish, usage and [DONE] together.
    pending = chunk({"role": "assistant", "content": ""})
    try:
        usage: Usage | None = None
        finish: str | None = None
        async for ev in chain(first, rs):
            head["model"] = ev.model or head["model"]
            delta: dict[str, Any] = {}
            if ev.text:
                delta["content"] = ev.text
            if ev.tool_calls:
                delta["tool_calls"] = ev.tool_calls
            if delta:
                yield pending + chunk(delta)
                pending = b""
            usage = ev.usage or usage
            finish = ev.finish_reason or finish
        if finish is None:
            raise unfinished(req, rs)
        tail = pending + chunk({}, finish)
        if req.include_usage:
            last = {**head, "choices": [], "usage": (usage or Usage()).to_openai()}
            tail += b"data: " + dumps(last) + b"\n\n"
        yield tail + b"data: [DONE]\n\n"
    except Exception as e:  # any failure (logged with its cause) ends it with an in-band error
        err = end.fail(e, req)
        yield pending + b"data: " + dumps(err.to_openai()) + b"\n\n"
    finally:
        await end()


async def list_models(request: Request) -> Response:
    """``auto``, every tier and every backend the caller's key may use; pin one by passing
    its id as ``model``."""
    gw: Gateway = request.app.state.gateway
    try:
        key = gw.keys.identify(request.headers)
    except TierlmError as e:
        return error_response(e)
    tiers = [t.name for t in gw.settings.tiers if gw.allowed(t.name, key)]
    data: list[dict[str, Any]] = [_model("auto", gw, {"kind": "auto", "tiers": tiers})]
    for t in gw.settings.tiers:
        if t.name in tiers:
            data.append(_model(t.name, gw, {"kind": "tier", "backends": list(t.backends)}))
    for b in gw.settings.backends:
        if b.name in gw.tiers or not gw.allowed(b.name, key):
            continue  # a one-backend tier of the same name is listed once
        info = {
            "kind": "backend",
            "backend_kind": b.kind,
            "model": b.model,
            "boundary": b.where.label,
        }
        data.append(_model(b.name, gw, info))
    return json_response({"object": "list", "data": data})


def _model(name: str, gw: Gateway, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": gw.started,
        "owned_by": "tierlm",
        "tierlm": info,
    }
