"""The Anthropic Messages adapter (``POST /v1/messages``), stream and non-stream.

Translation, both ways:

- system and developer messages become the top-level ``system`` text;
- OpenAI content parts become text and image blocks (data URLs as base64 sources);
- assistant ``tool_calls`` become ``tool_use`` blocks, ``tool`` messages ``tool_result``
  blocks; OpenAI ``tools``/``tool_choice`` become ``input_schema`` tools and ``auto``/``any``/
  ``tool``/``none`` choices;
- the streamed events (``message_start``, ``content_block_start``/``delta``/``stop`` with
  ``text_delta`` and ``input_json_delta``, ``message_delta``, ``message_stop``, ``ping``,
  ``error``) become :class:`StreamEvent` s with OpenAI tool-call deltas;
- ``stop_reason`` and usage (cache reads and writes count as input) map to OpenAI's.

The body is built from an allowlist: the fields above, ``thinking`` and ``service_tier``, and
``metadata.user_id`` (from ``metadata.user_id`` or OpenAI's ``user``; other metadata keys are
not sent); message ``name``, ``refusal`` parts, audio and file parts are not sent.

Options: ``version`` (``anthropic-version`` header, default 2023-06-01), ``beta``
(``anthropic-beta``), ``max_tokens`` (default when a request sets none: 4096), ``headers``,
``extra_body``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp

from tierlm.backends.base import BackendHealth
from tierlm.backends.http_backend import Answer, HttpBackend
from tierlm.backends.http_common import (
    Deadlines,
    ErrorContext,
    UpstreamError,
    drain,
    error_for,
    loads_chunk,
    resolve_api_key,
    sse_stream,
)
from tierlm.config.providers import PROVIDERS
from tierlm.errors import BackendAuthError, ProtocolError
from tierlm.types import (
    ChatRequest,
    ChatResponse,
    FinishReason,
    Message,
    StreamEvent,
    ToolCall,
    Usage,
)

if TYPE_CHECKING:
    from tierlm.config.backends import AnthropicConfig

DEFAULT_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
_STOP: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}
# Anthropic error ``type`` -> the HTTP status it comes with (for errors inside a stream).
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}
_PASS_THROUGH = ("thinking", "service_tier")


def _user_id(extra: dict[str, Any]) -> str | None:
    """Anthropic's ``metadata.user_id`` (its only metadata key): from ``metadata.user_id``,
    else OpenAI's ``user``."""
    meta = extra.get("metadata")
    found = meta.get("user_id") if isinstance(meta, dict) else None
    found = found if found is not None else extra.get("user")
    return str(found) if found is not None else None


def _usage(u: Any, prev: Usage | None = None) -> Usage:
    if not isinstance(u, dict):
        return prev or Usage()
    inp = sum(
        int(u.get(k) or 0)
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    return Usage(
        prompt_tokens=inp or (prev.prompt_tokens if prev else 0),
        completion_tokens=int(u.get("output_tokens") or 0),
    )


def _image_block(part: dict[str, Any]) -> dict[str, Any] | None:
    url = (part.get("image_url") or {}).get("url", "") if part.get("type") == "image_url" else ""
    if url.startswith("data:") and ";base64," in url:
        media, data = url[5:].split(";base64,", 1)
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    if url:
        return {"type": "image", "source": {"type": "url", "url": url}}
    return None


def _blocks(m: Message) -> list[dict[str, Any]]:
    if isinstance(m.content, list):
        out = []
        for part in m.content:
            if part.get("type") in ("text", None) and part.get("text"):
                out.append({"type": "text", "text": str(part["text"])})
            elif (img := _image_block(part)) is not None:
                out.append(img)
        return out
    return [{"type": "text", "text": m.content}] if m.content else []


def to_anthropic(messages: list[Message]) -> tuple[str, list[dict[str, Any]]]:
    """(system text, Anthropic messages) from OpenAI-shaped messages."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role in ("system", "developer"):
            system.append(m.text)
            continue
        if m.role == "tool":
            role = "user"
            blocks: list[dict[str, Any]] = [
                {"type": "tool_result", "tool_use_id": m.tool_call_id or "", "content": m.text}
            ]
        else:
            role = m.role
            blocks = _blocks(m)
            for c in m.tool_calls or []:
                try:
                    args = json.loads(c.function.get("arguments") or "{}")
                except ValueError:
                    args = {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": c.id,
                        "name": c.function.get("name", ""),
                        "input": args,
                    }
                )
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)  # the API wants alternating turns
        else:
            out.append({"role": role, "content": blocks})
    return "\n\n".join(s for s in system if s), out


def to_anthropic_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for t in tools:
        fn = t.get("function", t)
        out.append(
            {
                "name": fn.get("name"),
                "description": fn.get("description", ""),
                "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
            }
        )
    return out


def to_anthropic_choice(choice: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        return {"type": "tool", "name": name}
    return {"type": {"required": "any", "none": "none"}.get(choice, "auto")}


class AnthropicBackend(HttpBackend):
    """Claude models over the Messages API (a trailing assistant turn is continued)."""

    supports_prefill = True

    config: AnthropicConfig

    def __init__(self, config: AnthropicConfig) -> None:
        super().__init__(config)
        url = (config.url or DEFAULT_URL).rstrip("/")
        self.base_url = url.removesuffix("/v1")
        self._chat_url = self.base_url + "/v1/messages"

    def _headers(self) -> dict[str, str]:
        p = PROVIDERS.get(self.config.provider_name() or "anthropic")
        key = resolve_api_key(self.config, p.key_env if p else "ANTHROPIC_API_KEY")
        if key is None:
            var = self.config.api_key_env or (p.key_env if p else "ANTHROPIC_API_KEY")
            raise BackendAuthError(f"no API key configured (set {var})", backend=self.name)
        cfg = self.config
        headers = {
            "x-api-key": key,
            "anthropic-version": cfg.version or API_VERSION,
            "content-type": "application/json",
        }
        if cfg.beta:
            headers["anthropic-beta"] = cfg.beta
        headers.update(cfg.headers)
        return headers

    def body(self, req: ChatRequest, *, stream: bool) -> dict[str, Any]:
        system, messages = to_anthropic(req.messages)
        if messages and messages[-1]["role"] == "assistant":
            _trim_prefill(messages[-1]["content"])
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": req.max_tokens or self.config.max_tokens,
        }
        if system:
            body["system"] = system
        if stream:
            body["stream"] = True
        if req.temperature is not None:
            body["temperature"] = min(req.temperature, 1.0)  # Anthropic's range is [0, 1]
        if req.top_p is not None:
            body["top_p"] = req.top_p
        if req.top_k is not None:
            body["top_k"] = req.top_k
        if req.stop:
            body["stop_sequences"] = req.stop
        if req.tools and req.tool_choice != "none":
            body["tools"] = to_anthropic_tools(req.tools)
            if req.tool_choice is not None:
                body["tool_choice"] = to_anthropic_choice(req.tool_choice)
        body.update({k: v for k, v in req.extra.items() if k in _PASS_THROUGH})
        user_id = _user_id(req.extra)
        if user_id is not None:
            body["metadata"] = {"user_id": user_id}
        body.update(self.config.extra_body)
        return body

    # ------------------------------------------------------------------ answers

    def parse_answer(self, data: Any, ctx: ErrorContext) -> ChatResponse:
        if not isinstance(data, dict) or not isinstance(data.get("content"), list):
            if isinstance(data, dict) and data.get("type") == "error":
                raise _stream_error(data, ctx)
            raise ProtocolError("answer is not a Messages object", **ctx.kw())
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in data["content"]:
            if block.get("type") == "text":
                texts.append(str(block.get("text", "")))
            elif block.get("type") == "tool_use":
                calls.append(
                    ToolCall(
                        id=str(block.get("id", "")),
                        function={
                            "name": block.get("name", ""),
                            "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False),
                        },
                    )
                )
        text = "".join(texts)
        msg = Message(
            role="assistant", content=text if text or not calls else None, tool_calls=calls or None
        )
        extra: dict[str, Any] = {"id": str(data["id"])} if data.get("id") else {}
        return ChatResponse(
            **extra,
            model=str(data.get("model") or self.model),
            message=msg,
            finish_reason=_STOP.get(str(data.get("stop_reason")), "stop"),
            usage=_usage(data.get("usage")),
            backend=self.name,
        )

    # ------------------------------------------------------------------ stream

    def _read_events(
        self, resp: aiohttp.ClientResponse, deadlines: Deadlines, ctx: ErrorContext
    ) -> AsyncIterator[StreamEvent]:
        return self._events(sse_stream(self._chunks(resp, deadlines, ctx)), deadlines, ctx)

    async def _events(
        self, events: AsyncIterator[tuple[str, str]], deadlines: Deadlines, ctx: ErrorContext
    ) -> AsyncIterator[StreamEvent]:
        model = self.model
        usage = Usage()
        finish: FinishReason = "stop"
        tool_index: dict[int, int] = {}  # content block index -> tool-call index
        async for name, data in events:
            if name == "ping":
                continue
            ev = loads_chunk(data, ctx)
            kind = ev.get("type", name) if isinstance(ev, dict) else name
            if kind == "error":
                raise _stream_error(ev, ctx)
            if kind == "message_start":
                msg = ev.get("message") or {}
                model = str(msg.get("model") or model)
                usage = _usage(msg.get("usage"), usage)
            elif kind in ("content_block_start", "content_block_delta"):
                out = _block_event(ev, tool_index, model)
                if out is not None or kind == "content_block_delta":  # thinking is alive too
                    deadlines.got_content()
                if out is not None:
                    yield out
            elif kind == "message_delta":
                stop = (ev.get("delta") or {}).get("stop_reason")
                finish = _STOP.get(str(stop), "stop") if stop else finish
                usage = _usage(ev.get("usage"), usage)
            elif kind == "message_stop":
                await drain(events)
                yield StreamEvent(finish_reason=finish, usage=usage, model=model)
                return
        raise ProtocolError("stream ended before message_stop", **ctx.kw())

    # ------------------------------------------------------------------ health

    def _health_urls(self) -> Sequence[str]:
        """``GET /v1/models``: reachable, key accepted, and whether the model is offered."""
        return (self.base_url + "/v1/models",)

    async def _health_from(
        self, client: aiohttp.ClientSession, answers: list[Answer], latency: float
    ) -> BackendHealth:
        raw = answers[0][2]
        try:
            models = [str(m["id"]) for m in json.loads(raw).get("data", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            return BackendHealth(ok=False, detail="malformed /v1/models answer", latency_ms=latency)
        return BackendHealth(
            ok=True, detail="ok", models=models, latency_ms=latency, in_flight=self._in_flight
        )


def _trim_prefill(blocks: list[dict[str, Any]]) -> None:
    """The API refuses a final assistant turn that ends with whitespace (it is a prefill)."""
    if blocks and blocks[-1].get("type") == "text":
        blocks[-1]["text"] = blocks[-1]["text"].rstrip()


def _block_event(ev: dict[str, Any], tool_index: dict[int, int], model: str) -> StreamEvent | None:
    """The text or tool-call delta of a ``content_block_start``/``_delta`` event."""
    i = int(ev.get("index", 0))
    if ev.get("type") == "content_block_start":
        block = ev.get("content_block") or {}
        if block.get("type") == "tool_use":
            k = tool_index.setdefault(i, len(tool_index))
            call = {
                "index": k,
                "id": block.get("id", ""),
                "type": "function",
                "function": {"name": block.get("name", ""), "arguments": ""},
            }
            return StreamEvent(tool_calls=[call], model=model)
        return StreamEvent(text=str(block["text"]), model=model) if block.get("text") else None
    delta = ev.get("delta") or {}
    if delta.get("type") == "text_delta":
        return StreamEvent(text=str(delta.get("text", "")), model=model)
    if delta.get("type") == "input_json_delta":
        call = {
            "index": tool_index.get(i, 0),
            "function": {"arguments": delta.get("partial_json", "")},
        }
        return StreamEvent(tool_calls=[call], model=model)
    return None  # thinking and signature deltas: not part of the OpenAI answer


def _stream_error(ev: Any, ctx: ErrorContext) -> Exception:
    err = ev.get("error") if isinstance(ev, dict) else None
    etype = str(err.get("type", "")) if isinstance(err, dict) else ""
    msg = str(err.get("message", "")) if isinstance(err, dict) else ""
    up = UpstreamError(message=msg[:300], type=etype)
    status = ERROR_STATUS.get(etype, 500)
    return error_for(status, up, f"upstream error event {etype}: {up.message}", ctx)
