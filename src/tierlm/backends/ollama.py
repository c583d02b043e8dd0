"""The Ollama native adapter: ``/api/chat`` (NDJSON stream), ``/api/ps`` and ``/api/tags``.

Use it instead of Ollama's OpenAI-compatible ``/v1`` (provider ``ollama-openai``) to control
``keep_alive`` (how long Ollama keeps the model in memory after a request) and to see which
models are loaded (warm) and which are only on disk (cold).

The body is built from an allowlist: each message's role, text, base64 images, tool calls
(name and arguments) and a tool result's ``name``; the tools' ``type`` and ``function``
(``name``, ``description``, ``parameters``); sampling options; and ``format`` from the
request's ``response_format``. Nothing else is sent.

Settings (:class:`~tierlm.config.backends.OllamaConfig`): ``keep_alive`` (``"10m"``, seconds,
or ``-1`` for ever; sent with every request), ``num_ctx`` (the context Ollama loads the model
with), ``ollama_options`` (merged into the request's ``options``), ``headers``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp

from tierlm import hostinfo
from tierlm.backends.base import BackendHealth, tool_spec
from tierlm.backends.http_backend import Answer, HttpBackend
from tierlm.backends.http_common import (
    Deadlines,
    ErrorContext,
    UpstreamError,
    drain,
    error_for,
    ndjson_stream,
    normalise_base_url,
)
from tierlm.errors import ProtocolError
from tierlm.types import (
    Boundary,
    ChatRequest,
    ChatResponse,
    FinishReason,
    Message,
    StreamEvent,
    ToolCall,
    Usage,
)

if TYPE_CHECKING:
    from tierlm.config.backends import OllamaConfig

DEFAULT_URL = "http://127.0.0.1:11434"
GIB = 1024**3


def full_name(model: str) -> str:
    """Ollama's canonical name: ``llama3.2`` is ``llama3.2:latest``."""
    return model if ":" in model.rsplit("/", 1)[-1] else model + ":latest"


def _message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text}
    if isinstance(m.content, list):
        images = []
        for part in m.content:
            url = (part.get("image_url") or {}).get("url", "")
            if part.get("type") == "image_url" and ";base64," in url:
                images.append(url.split(";base64,", 1)[1])
        if images:
            out["images"] = images
    if m.tool_calls:
        calls = []
        for c in m.tool_calls:
            try:
                args = json.loads(c.function.get("arguments") or "{}")
            except ValueError:
                args = {}
            calls.append({"function": {"name": c.function.get("name", ""), "arguments": args}})
        out["tool_calls"] = calls
    if m.role == "tool" and m.name:
        out["tool_name"] = m.name
    return out


def _tool_calls(raw: Any) -> list[ToolCall]:
    calls = []
    for c in raw or []:
        fn = c.get("function") or {}
        args = fn.get("arguments")
        calls.append(
            ToolCall(
                id="call_" + uuid.uuid4().hex[:24],
                function={
                    "name": fn.get("name", ""),
                    "arguments": args
                    if isinstance(args, str)
                    else json.dumps(args or {}, ensure_ascii=False),
                },
            )
        )
    return calls


def _usage(d: dict[str, Any]) -> Usage:
    return Usage(
        prompt_tokens=int(d.get("prompt_eval_count") or 0),
        completion_tokens=int(d.get("eval_count") or 0),
    )


def _finish(d: dict[str, Any], had_tools: bool) -> FinishReason:
    if had_tools:
        return "tool_calls"
    return "length" if d.get("done_reason") == "length" else "stop"


class OllamaBackend(HttpBackend):
    """A model served by Ollama, spoken to in its native API (``/api/chat`` continues a
    trailing assistant turn)."""

    supports_prefill = True

    config: OllamaConfig

    def __init__(self, config: OllamaConfig) -> None:
        super().__init__(config)
        self.base_url = normalise_base_url(config.url or DEFAULT_URL).removesuffix("/api")
        self._chat_url = self.base_url + "/api/chat"

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        headers.update(self.config.headers)
        return headers

    def body(self, req: ChatRequest, *, stream: bool) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        for ours, theirs in (
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("top_k", "top_k"),
            ("seed", "seed"),
            ("max_tokens", "num_predict"),
            ("stop", "stop"),
        ):
            value = getattr(req, ours)
            if value is not None:
                opts[theirs] = value
        if self.config.num_ctx:
            opts["num_ctx"] = self.config.num_ctx
        opts.update(self.config.ollama_options)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [_message(m) for m in req.messages],
            "stream": stream,
        }
        if opts:
            body["options"] = opts
        if self.config.keep_alive is not None:
            body["keep_alive"] = self.config.keep_alive
        if req.tools and req.tool_choice != "none":
            body["tools"] = [tool_spec(t) for t in req.tools]
        fmt = req.extra.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_object":
            body["format"] = fmt.get("schema") or "json"
        elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            body["format"] = (fmt.get("json_schema") or {}).get("schema") or "json"
        return body

    # ------------------------------------------------------------------ answers

    def parse_answer(self, data: Any, ctx: ErrorContext) -> ChatResponse:
        if not isinstance(data, dict) or "error" in data or "message" not in data:
            raise _embedded_error(data, ctx)
        msg = data.get("message") or {}
        calls = _tool_calls(msg.get("tool_calls"))
        text = str(msg.get("content") or "")
        return ChatResponse(
            model=str(data.get("model") or self.model),
            message=Message(
                role="assistant",
                content=text if text or not calls else None,
                tool_calls=calls or None,
            ),
            finish_reason=_finish(data, bool(calls)),
            usage=_usage(data),
            backend=self.name,
        )

    # ------------------------------------------------------------------ stream

    def _read_events(
        self, resp: aiohttp.ClientResponse, deadlines: Deadlines, ctx: ErrorContext
    ) -> AsyncIterator[StreamEvent]:
        chunks = self._chunks(resp, deadlines, ctx)
        return self._events(ndjson_stream(chunks, ctx), deadlines, ctx)

    async def _events(
        self, chunks: AsyncIterator[Any], deadlines: Deadlines, ctx: ErrorContext
    ) -> AsyncIterator[StreamEvent]:
        n_calls = 0
        async for d in chunks:
            if not isinstance(d, dict) or "error" in d:
                raise _embedded_error(d, ctx)
            model = str(d.get("model") or self.model)
            msg = d.get("message") or {}
            text = str(msg.get("content") or "")
            deltas = None
            if msg.get("tool_calls"):
                calls = _tool_calls(msg["tool_calls"])
                deltas = [
                    {
                        "index": n_calls + i,
                        "id": c.id,
                        "type": "function",
                        "function": dict(c.function),
                    }
                    for i, c in enumerate(calls)
                ]
                n_calls += len(calls)
            if text or deltas:
                deadlines.got_content()
                yield StreamEvent(text=text, tool_calls=deltas, model=model)
            if d.get("done"):
                await drain(chunks)
                yield StreamEvent(
                    finish_reason=_finish(d, n_calls > 0), usage=_usage(d), model=model
                )
                return
        raise ProtocolError("stream ended before done", **ctx.kw())

    # ------------------------------------------------------------------ health

    def _health_urls(self) -> Sequence[str]:
        """``/api/tags`` (models on disk) and ``/api/ps`` (models in memory)."""
        return (self.base_url + "/api/tags", self.base_url + "/api/ps")

    def _health_failed(self, answer: Answer, latency: float) -> BackendHealth:
        return BackendHealth(ok=False, detail=f"/api/tags answered {answer[0]}", latency_ms=latency)

    async def _health_from(
        self, client: aiohttp.ClientSession, answers: list[Answer], latency: float
    ) -> BackendHealth:
        (_, _, tags), (ps_status, _, ps) = answers
        try:
            available = {
                str(m.get("model") or m.get("name")): m
                for m in json.loads(tags).get("models") or []
            }
            loaded = [
                str(m.get("model") or m.get("name"))
                for m in (json.loads(ps).get("models") or [] if ps_status < 400 else [])
            ]
        except (ValueError, AttributeError):
            return BackendHealth(
                ok=False, detail="malformed /api/tags or /api/ps answer", latency_ms=latency
            )
        name = full_name(self.model)
        h = BackendHealth(
            ok=True,
            models=sorted(available),
            loaded_models=loaded,
            loaded=name in loaded,
            latency_ms=latency,
            in_flight=self._in_flight,
        )
        if name not in available:
            h.ok = False
            h.detail = f"model {name} is not pulled (ollama pull {self.model})"
        else:
            h.detail = "loaded" if h.loaded else "cold (on disk, not in memory)"
            size = available[name].get("size")
            if isinstance(size, int | float):
                h.memory_needed_gb = round(size / GIB, 2)
        if self.boundary is Boundary.HOST:
            h.memory_free_gb = round(hostinfo.memory_available_bytes() / GIB, 2)
        return h


def _embedded_error(data: Any, ctx: ErrorContext) -> Exception:
    text = str(data.get("error", "")) if isinstance(data, dict) else ""
    if not text:
        return ProtocolError("answer is not an Ollama chat object", **ctx.kw())
    up = UpstreamError(message=text[:300])
    low = text.lower()
    status = 503 if "busy" in low else (404 if "not found" in low else 500)
    if any(m in low for m in ("context", "too long")):
        status = 400
    return error_for(status, up, f"upstream error: {up.message}", ctx)
