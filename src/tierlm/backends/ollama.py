"""The Ollama native adapter: ``/api/chat`` (NDJSON stream), ``/api/ps`` and ``/api/tags``.

Use it instead of Ollama's OpenAI-compatible ``/v1`` (provider ``ollama-openai``) to control
``keep_alive`` (how long Ollama keeps the model in memory after a request) and to see which
models are loaded (warm) and which are only on disk (cold).

Options: ``keep_alive`` (``"10m"``, seconds, or ``-1`` for ever; sent with every request),
``num_ctx`` (the context Ollama loads the model with), ``ollama_options`` (merged into the
request's ``options``), ``headers``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp

from tierlm import hostinfo
from tierlm.backends.base import Backend, BackendHealth, dumps
from tierlm.backends.http_common import (
    TRANSPORT_ERRORS,
    Deadlines,
    ErrorContext,
    SessionHolder,
    UpstreamError,
    client_timeout,
    drain,
    error_for,
    error_from_response,
    error_from_transport,
    fetch,
    loads_chunk,
    ndjson_stream,
    normalise_base_url,
    open_stream,
    raise_for_status,
    read_with_deadlines,
)
from tierlm.errors import BackendTimeout, ProtocolError
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
    from tierlm.config.settings import BackendConfig

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


class OllamaBackend(Backend):
    """A model served by Ollama, spoken to in its native API."""

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.base_url = normalise_base_url(config.url or DEFAULT_URL).removesuffix("/api")
        self._session = SessionHolder(config)
        t = config.timeouts
        self._complete_limits = client_timeout(config, total=t.total)
        self._health_limits = client_timeout(config, read=max(t.connect, 5.0))
        self._in_flight = 0

    async def _http(self) -> aiohttp.ClientSession:
        s = self._session.current()
        if s is None:
            headers = {"content-type": "application/json"}
            headers.update(
                {str(k): str(v) for k, v in (self.config.options.get("headers") or {}).items()}
            )
            s = await self._session.open(headers)
        return s

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
        if self.config.options.get("num_ctx"):
            opts["num_ctx"] = int(self.config.options["num_ctx"])
        opts.update(self.config.options.get("ollama_options") or {})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [_message(m) for m in req.messages],
            "stream": stream,
        }
        if opts:
            body["options"] = opts
        if "keep_alive" in self.config.options:
            body["keep_alive"] = self.config.options["keep_alive"]
        if req.tools and req.tool_choice != "none":
            body["tools"] = req.tools
        fmt = req.extra.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_object":
            body["format"] = fmt.get("schema") or "json"
        elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            body["format"] = (fmt.get("json_schema") or {}).get("schema") or "json"
        return body

    # ------------------------------------------------------------------ complete

    async def complete(self, request: ChatRequest) -> ChatResponse:
        ctx = ErrorContext(self.name, request.request_id)
        client = await self._http()
        body = dumps(self.body(request, stream=False)).encode()
        start = time.perf_counter()
        self._in_flight += 1
        try:
            status, headers, raw = await fetch(
                client,
                "POST",
                self.base_url + "/api/chat",
                data=body,
                limits=self._complete_limits,
            )
        except TRANSPORT_ERRORS as e:
            if type(e) is TimeoutError:  # aiohttp's total (its other timeouts are subclasses)
                raise BackendTimeout("total timeout", **ctx.kw()) from None
            raise error_from_transport(e, ctx) from e
        finally:
            self._in_flight -= 1
        if status >= 400:
            raise error_from_response(status, headers, raw[:65536], ctx)
        data = loads_chunk(raw, ctx)
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
            latency_ms=(time.perf_counter() - start) * 1000.0,
        )

    # ------------------------------------------------------------------ stream

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        ctx = ErrorContext(self.name, request.request_id)
        client = await self._http()
        deadlines = Deadlines(self.config)
        body = dumps(self.body(request, stream=True)).encode()
        self._in_flight += 1
        try:
            resp = await open_stream(client, self.base_url + "/api/chat", body, deadlines, ctx)
            try:
                await raise_for_status(resp, ctx)
                chunks = read_with_deadlines(resp.content.iter_any(), deadlines, ctx)
                async for ev in self._events(ndjson_stream(chunks, ctx), deadlines, ctx):
                    yield ev
            except TRANSPORT_ERRORS as e:
                raise error_from_transport(e, ctx) from e
            finally:
                resp.release()
        finally:
            self._in_flight -= 1

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

    async def health(self) -> BackendHealth:
        """``/api/tags`` (models on disk) and ``/api/ps`` (models in memory)."""
        client = await self._http()
        start = time.perf_counter()
        try:
            (tags_status, _, tags), (ps_status, _, ps) = await asyncio.gather(
                fetch(client, "GET", self.base_url + "/api/tags", limits=self._health_limits),
                fetch(client, "GET", self.base_url + "/api/ps", limits=self._health_limits),
            )
        except TRANSPORT_ERRORS as e:
            err = error_from_transport(e, ErrorContext(self.name))
            return BackendHealth(ok=False, detail=f"unreachable: {err.message}")
        latency = (time.perf_counter() - start) * 1000.0
        if tags_status >= 400:
            return BackendHealth(
                ok=False, detail=f"/api/tags answered {tags_status}", latency_ms=latency
            )
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

    async def aclose(self) -> None:
        await self._session.aclose()


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
