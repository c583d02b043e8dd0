"""The OpenAI-compatible HTTP adapter: one wire format, many homes.

vLLM, SGLang, llama.cpp's llama-server, LM Studio, Ollama's ``/v1``, OpenAI, DeepSeek,
Mistral, Groq, Together, OpenRouter and Gemini's OpenAI endpoint are all this one adapter with
different settings: a provider row (:mod:`tierlm.config.providers`) gives the base URL, the key
variable, the boundary and the quirks; ``OpenAIConfig`` may override each.

Quirks (provider row, or ``quirks`` in config):

- ``no_stream_usage_option``: do not send ``stream_options`` (the server rejects it).
- ``max_completion_tokens``: send ``max_completion_tokens`` instead of ``max_tokens``.
- ``top_k``: send ``top_k`` to an external provider (always sent to self-hosted servers).
- ``developer_role``: keep the ``developer`` role (else it is sent as ``system``).

Prefill (the provider row's ``prefill``): ``llama-server`` continues a trailing assistant turn
by itself, vLLM when asked with ``continue_final_message``; other providers answer a new turn,
so ``supports_prefill`` is false for them.

Other settings (:class:`~tierlm.config.backends.OpenAIConfig`): ``headers`` (extra request
headers), ``extra_body`` (merged into every body),
``metrics`` (false: do not read a self-hosted server's Prometheus ``/metrics`` in ``health``),
``constrain_tools`` (``json_object`` or ``json_schema``: constrain prompt-tool replies).

Bodies are built from an allowlist: the request's known fields, message keys ``role``,
``content``, ``name``, ``tool_calls`` and ``tool_call_id``, tool keys ``type`` and
``function`` (``name``, ``description``, ``parameters``, ``strict``), and the pass-on fields of
:data:`~tierlm.types.PASS_ON_FIELDS` (not Anthropic's ``thinking``); nothing else is sent.

Backends without native tool calling (``tools: false``, e.g. ``llama-server``) get prompt-based
tool calls from :mod:`tierlm.backends.tools`, so callers always see OpenAI ``tool_calls``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from tierlm.backends import tools as prompt_tools
from tierlm.backends.base import BackendHealth, tool_calls_to_deltas, tool_spec
from tierlm.backends.http_backend import Answer, HttpBackend
from tierlm.backends.http_common import (
    TRANSPORT_ERRORS,
    Deadlines,
    ErrorContext,
    UpstreamError,
    drain,
    error_for,
    fetch,
    loads_chunk,
    normalise_base_url,
    parse_error_body,
    resolve_api_key,
    sse_stream,
)
from tierlm.config.providers import PROVIDERS, Provider
from tierlm.errors import BackendAuthError, BackendTimeout, ConfigError, ProtocolError
from tierlm.types import (
    PASS_ON_FIELDS,
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
    from tierlm.config.backends import OpenAIConfig

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "eos": "stop",
    "end_turn": "stop",
    "error": "error",
}
# Prometheus gauges of self-hosted servers: (running, waiting).
_METRICS = (
    ("vllm:num_requests_running", "vllm:num_requests_waiting"),
    ("llamacpp:requests_processing", "llamacpp:requests_deferred"),
    ("sglang:num_running_reqs", "sglang:num_queue_reqs"),
)


_MESSAGE_KEYS = {"role", "content", "name", "tool_calls", "tool_call_id"}
_PASS_ON = PASS_ON_FIELDS - {"thinking"}  # the pass-on fields of this wire format


def finish_reason(value: Any) -> FinishReason:
    return _FINISH.get(str(value), "stop") if value else "stop"


def usage_from(data: Any) -> Usage | None:
    if not isinstance(data, dict):
        return None
    return Usage(
        prompt_tokens=int(data.get("prompt_tokens") or 0),
        completion_tokens=int(data.get("completion_tokens") or 0),
    )


class OpenAIBackend(HttpBackend):
    """``/chat/completions`` over HTTP, stream and non-stream, with native or prompt tools."""

    config: OpenAIConfig

    def __init__(self, config: OpenAIConfig) -> None:
        super().__init__(config)
        self.provider: Provider | None = PROVIDERS.get(config.provider or "")
        if config.provider and self.provider is None:
            raise ConfigError(
                f"unknown provider {config.provider!r} (known: {', '.join(sorted(PROVIDERS))})",
                key=f"backends.{self.name}",
            )
        url = config.url or (self.provider.url if self.provider else None)
        if not url:
            raise ConfigError(
                "an OpenAI-compatible backend needs `url` (its base URL, "
                "e.g. http://gpu-server:8000/v1)",
                key=f"backends.{self.name}.url",
            )
        self.base_url = normalise_base_url(url, default_path="/v1")
        quirks = set(self.provider.quirks if self.provider else ())
        quirks.update(config.quirks)
        self.quirks = frozenset(quirks)
        native = (
            config.tools
            if config.tools is not None
            else (self.provider.tools if self.provider else True)
        )
        self.native_tools: bool = native
        self.prefill = self.provider.prefill if self.provider else None
        self.supports_prefill = self.prefill is not None
        self._chat_url = self.base_url + "/chat/completions"

    # ------------------------------------------------------------------ headers and body

    def _headers(self) -> dict[str, str]:
        key = resolve_api_key(self.config, self.provider.key_env if self.provider else None)
        if key is None and self.boundary is Boundary.EXTERNAL:
            var = self.config.api_key_env or (self.provider.key_env if self.provider else None)
            raise BackendAuthError(
                f"no API key configured (set {var or 'api_key_env'})", backend=self.name
            )
        headers = {"content-type": "application/json", "accept": "application/json"}
        headers.update(self.config.headers)
        if key:
            headers["authorization"] = f"Bearer {key}"
        return headers

    def _message(self, m: Message) -> dict[str, Any]:
        d = m.model_dump(exclude_none=True, include=_MESSAGE_KEYS)
        if m.tool_calls:
            d["tool_calls"] = [
                {
                    "id": c.id,
                    "type": c.type,
                    "function": {
                        k: c.function[k] for k in ("name", "arguments") if k in c.function
                    },
                }
                for c in m.tool_calls
            ]
        if m.role == "developer" and "developer_role" not in self.quirks:
            d["role"] = "system"
        return d

    def body(self, req: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The JSON body for one request (public for tests and the bench)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [self._message(m) for m in req.messages],
        }
        if stream:
            body["stream"] = True
            if "no_stream_usage_option" not in self.quirks:
                body["stream_options"] = {"include_usage": True}
        if req.max_tokens is not None:
            mct = "max_completion_tokens" in self.quirks
            body["max_completion_tokens" if mct else "max_tokens"] = req.max_tokens
        for field in ("temperature", "top_p", "stop", "seed"):
            value = getattr(req, field)
            if value is not None:
                body[field] = value
        if req.top_k is not None and (
            self.boundary is not Boundary.EXTERNAL or "top_k" in self.quirks
        ):
            body["top_k"] = req.top_k
        if req.tools:
            body["tools"] = [tool_spec(t) for t in req.tools]
            if req.tool_choice is not None:
                body["tool_choice"] = req.tool_choice
        if self.prefill == "continue_final_message" and req.messages[-1].role == "assistant":
            body["continue_final_message"], body["add_generation_prompt"] = True, False
        body.update(self.config.extra_body)
        body.update({k: v for k, v in req.extra.items() if k in _PASS_ON})
        return body

    def _uses_prompt_tools(self, req: ChatRequest) -> bool:
        return bool(req.tools) and not self.native_tools and req.tool_choice != "none"

    def _prompt_request(self, req: ChatRequest) -> ChatRequest:
        """Tools in the prompt; with ``constrain_tools`` (``json_object`` for
        llama.cpp servers, ``json_schema`` for vLLM/SGLang) the reply is also constrained to
        the tool-call JSON schema, which makes small models reliable."""
        return prompt_tools.constrained_request(req, self.config.constrain_tools)

    # ------------------------------------------------------------------ complete

    async def complete(self, request: ChatRequest) -> ChatResponse:
        if self._uses_prompt_tools(request):
            plain = self._prompt_request(request)
            return prompt_tools.finish_response(await super().complete(plain), request)
        return await super().complete(request)

    def parse_answer(self, data: Any, ctx: ErrorContext) -> ChatResponse:
        if not isinstance(data, dict):
            raise ProtocolError("answer is not a JSON object", **ctx.kw())
        if "error" in data and not data.get("choices"):
            raise _embedded_error(data, ctx)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ProtocolError("answer has no choices", **ctx.kw())
        choice = choices[0]
        msg = choice.get("message") or {}
        try:
            calls = [ToolCall.model_validate(c) for c in msg.get("tool_calls") or []] or None
            message = Message(role="assistant", content=msg.get("content"), tool_calls=calls)
        except ValueError as e:
            raise ProtocolError(
                f"malformed message in answer ({type(e).__name__})", **ctx.kw()
            ) from None
        extra: dict[str, Any] = {"id": str(data["id"])} if data.get("id") else {}
        return ChatResponse(
            **extra,
            model=str(data.get("model") or self.model),
            message=message,
            finish_reason=finish_reason(choice.get("finish_reason")),
            usage=usage_from(data.get("usage")) or Usage(),
            backend=self.name,
        )

    # ------------------------------------------------------------------ stream

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        if self._uses_prompt_tools(request):
            plain = self._prompt_request(request)
            return prompt_tools.finish_stream(super().stream(plain), request)
        return super().stream(request)

    async def _read_events(
        self, resp: aiohttp.ClientResponse, deadlines: Deadlines, ctx: ErrorContext
    ) -> AsyncIterator[StreamEvent]:
        if resp.headers.get("content-type", "").startswith("application/json"):
            # a server that ignored ``stream`` (or answered with an error object)
            for ev in self._whole_as_events(await _read(resp, deadlines, ctx), ctx):
                yield ev
            return
        chunks = self._chunks(resp, deadlines, ctx)
        async for ev in self._events(sse_stream(chunks), deadlines, ctx):
            yield ev

    async def _events(
        self, events: AsyncIterator[tuple[str, str]], deadlines: Deadlines, ctx: ErrorContext
    ) -> AsyncIterator[StreamEvent]:
        finish: FinishReason | None = None
        usage: Usage | None = None
        model: str | None = None
        done = False
        async for _event, data in events:
            if data == "[DONE]":
                done = True
                await drain(events)
                break
            chunk = loads_chunk(data, ctx)
            if not isinstance(chunk, dict):
                raise ProtocolError("stream chunk is not a JSON object", **ctx.kw())
            if "error" in chunk and not chunk.get("choices"):
                raise _embedded_error(chunk, ctx)
            model = chunk.get("model") or model
            if chunk.get("usage"):
                usage = usage_from(chunk["usage"])
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta") or {}
                text = delta.get("content") or ""
                calls = delta.get("tool_calls")
                if text or calls or delta.get("reasoning_content"):
                    deadlines.got_content()
                if text or calls:
                    if calls:
                        calls = _indexed(calls)
                    yield StreamEvent(text=text, tool_calls=calls, model=model)
                if choice.get("finish_reason"):
                    finish = finish_reason(choice["finish_reason"])
        if not done and finish is None:
            raise ProtocolError("stream ended before the answer finished", **ctx.kw())
        yield StreamEvent(finish_reason=finish or "stop", usage=usage, model=model or self.model)

    def _whole_as_events(self, data: Any, ctx: ErrorContext) -> list[StreamEvent]:
        resp = self.parse_answer(data, ctx)
        calls = resp.message.tool_calls
        events = []
        if resp.text or calls:
            events.append(
                StreamEvent(
                    text=resp.text,
                    model=resp.model,
                    tool_calls=tool_calls_to_deltas(calls) if calls else None,
                )
            )
        events.append(
            StreamEvent(finish_reason=resp.finish_reason, usage=resp.usage, model=resp.model)
        )
        return events

    # ------------------------------------------------------------------ health

    def _health_urls(self) -> Sequence[str]:
        """``GET /models`` (reachability, served models); ``/metrics`` for queue depth."""
        return (self.base_url + "/models",)

    async def _health_from(
        self, client: aiohttp.ClientSession, answers: list[Answer], latency: float
    ) -> BackendHealth:
        raw = answers[0][2]
        try:
            data = json.loads(raw)
            models = [str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict)]
        except (ValueError, AttributeError):
            return BackendHealth(ok=False, detail="malformed /models answer", latency_ms=latency)
        h = BackendHealth(
            ok=True, detail="ok", models=models, latency_ms=latency, in_flight=self._in_flight
        )
        if self.boundary is not Boundary.EXTERNAL:
            # a self-hosted server lists what it serves, which it holds in memory
            h.loaded = self.model in models or (len(models) == 1 and self.model == "default")
            h.loaded_models = models
            if self.config.metrics:
                await self._read_metrics(client, h)
        return h

    async def _read_metrics(self, client: aiohttp.ClientSession, h: BackendHealth) -> None:
        root = urlunsplit(urlsplit(self.base_url)._replace(path="/metrics", query=""))
        try:
            status, _, raw = await fetch(client, "GET", root, limits=self._health_limits)
        except TRANSPORT_ERRORS:
            return
        if status != 200:
            return
        running, waiting = parse_queue_metrics(raw.decode("utf-8", "replace"))
        if running is not None:
            h.in_flight = running
        if waiting is not None:
            h.queued = waiting


async def _read(resp: aiohttp.ClientResponse, deadlines: Deadlines, ctx: ErrorContext) -> Any:
    """The whole (JSON) body of a response that should have been a stream."""
    try:
        async with asyncio.timeout_at(deadlines.due()):
            raw = await resp.read()
    except TimeoutError as e:
        if isinstance(e, aiohttp.ClientError):
            raise
        raise BackendTimeout(f"{deadlines.expired()} timeout", **ctx.kw()) from None
    return loads_chunk(raw, ctx)


def parse_queue_metrics(text: str) -> tuple[int | None, int | None]:
    """(running, waiting) from a Prometheus text page of vLLM, llama-server or SGLang."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, rest = line.partition(" ")
        base = name.split("{", 1)[0]
        try:
            values[base] = values.get(base, 0.0) + float(rest.split()[0])
        except (ValueError, IndexError):
            continue
    for run, wait in _METRICS:
        if run in values or wait in values:
            r, w = values.get(run), values.get(wait)
            return (int(r) if r is not None else None, int(w) if w is not None else None)
    return None, None


def _indexed(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Some servers omit ``index`` on tool-call deltas: number them by position."""
    if all("index" in c for c in calls):
        return calls
    return [{**c, "index": c.get("index", i)} for i, c in enumerate(calls)]


def _embedded_error(data: dict[str, Any], ctx: ErrorContext) -> Exception:
    """An error object inside a 200 answer or a stream chunk."""
    up: UpstreamError = parse_error_body(data)
    err = data.get("error")
    code = err.get("code") if isinstance(err, dict) else None
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    if status == 500 and "context" in up.haystack:
        status = 400
    msg = "upstream error in stream" + (f": {up.message}" if up.message else "")
    return error_for(status, up, msg, ctx)
