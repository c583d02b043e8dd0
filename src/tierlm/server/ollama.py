"""The Ollama API: ``/api/chat``, ``/api/generate``, ``/api/tags``, ``/api/show``,
``/api/version``, so edge devices that use Ollama clients work unchanged.

As Ollama does, answers stream as NDJSON unless the body says ``"stream": false``; the last
line has ``done: true``, ``done_reason`` and the token counts and durations (nanoseconds).
Options map onto the request (``num_predict`` -> max tokens, ``temperature``, ``top_p``,
``top_k``, ``stop``, ``seed``; other options are not forwarded); ``format`` (``"json"`` or a
JSON schema) becomes OpenAI's ``response_format``, scanned like the messages. A top-level field
the route does not know, or one tierlm cannot honour (``suffix``, ``images``, ``template``,
``raw``, ``context``), is refused with a 400 that names it; message keys other than ``role``,
``content``, ``tool_calls`` (and Ollama's ``images``, ``thinking``, ``tool_name``, which are
not forwarded) are dropped. Errors are Ollama-shaped, ``{"error": "..."}``, with the right status; a
failure after the stream committed ends it with an ``{"error": ...}`` line, never ``done``.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from tierlm import __version__
from tierlm.backends.base import merge_tool_call_delta
from tierlm.errors import ModelNotFound, TierlmError
from tierlm.server.gateway import (
    FieldError,
    Gateway,
    WireFormat,
    chat_request,
    dumps,
    error_headers,
    header_hints,
    json_response,
    read_json,
)
from tierlm.server.streaming import StreamEnd, chain, unfinished
from tierlm.types import Usage

if TYPE_CHECKING:
    from tierlm.execute.streams import RoutedStream
    from tierlm.types import ChatRequest, ChatResponse, Plan, StreamEvent

_NDJSON = "application/x-ndjson"
_COMMON_FIELDS = frozenset({"model", "format", "options", "stream", "keep_alive", "think"})
_CHAT_FIELDS = _COMMON_FIELDS | {"messages", "tools"}
_GENERATE_FIELDS = _COMMON_FIELDS | {"prompt", "system"}
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "stop": "stop",
    "num_predict": "max_tokens",
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def ollama_error(e: TierlmError, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": e.message}, e.status, error_headers(e, headers))


def _tool_calls_in(calls: Any, where: str) -> list[dict[str, Any]] | None:
    """Ollama tool calls (arguments as an object) as OpenAI ones (arguments as a string);
    400 naming the call when one is not ``{"function": {"name": str, "arguments": ...}}``."""
    if calls is None or calls == []:
        return None
    if not isinstance(calls, list):
        raise FieldError(f"{where}: must be a list of tool calls", where)
    out = []
    for i, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            param = f"{where}[{i}].function"
            raise FieldError(f"{param}: must be an object with a string name", param)
        args = fn.get("arguments", {})
        if not isinstance(args, dict | str):
            param = f"{where}[{i}].function.arguments"
            raise FieldError(f"{param}: must be an object", param)
        cid = c.get("id")
        out.append(
            {
                "id": cid if isinstance(cid, str) and cid else "call_" + uuid.uuid4().hex[:12],
                "type": "function",
                "function": {
                    "name": fn["name"],
                    "arguments": args if isinstance(args, str) else json.dumps(args),
                },
            }
        )
    return out


def _tool_calls_out(calls: list[Any]) -> list[dict[str, Any]]:
    out = []
    for c in calls:
        fn = c.function if hasattr(c, "function") else c.get("function") or {}
        raw = fn.get("arguments") or "{}"
        try:
            args = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            args = {"_raw": raw}
        out.append(
            {
                "function": {
                    "name": fn.get("name", ""),
                    "arguments": args if isinstance(args, dict) else {"_": args},
                }
            }
        )
    return out


def _messages_in(messages: Any) -> Any:
    if not isinstance(messages, list):
        return messages  # pydantic names the problem
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, dict):
            if m.get("images"):
                _unsupported(f"messages[{i}].images", "images")
            m = {k: v for k, v in m.items() if k not in ("images", "thinking", "tool_name")}
            if "tool_calls" in m:
                m["tool_calls"] = _tool_calls_in(m["tool_calls"], f"messages[{i}].tool_calls")
        out.append(m)
    return out


def _check_fields(body: dict[str, Any], generate: bool) -> None:
    known = _GENERATE_FIELDS if generate else _CHAT_FIELDS
    unknown = sorted(str(k) for k in body if k not in known)
    if unknown:
        raise FieldError(f"{unknown[0]}: unknown or unsupported field (not forwarded)", unknown[0])
    fmt = body.get("format")
    if fmt not in (None, "", "json") and not isinstance(fmt, dict):
        raise FieldError('format: must be "json" or a JSON schema object', "format")
    if generate and not isinstance(body.get("system", ""), str):
        raise FieldError("system: must be a string", "system")


def _unsupported(param: str, what: str) -> None:
    raise FieldError(f"{param}: {what} are not supported by this gateway", param)


def parse(body: Any, request: Request, gw: Gateway, *, generate: bool) -> ChatRequest:
    """An Ollama ``/api/chat`` or ``/api/generate`` body as a :class:`ChatRequest`."""
    if not isinstance(body, dict):
        raise FieldError("request body must be a JSON object")
    _check_fields(body, generate)
    if generate:
        if not isinstance(body.get("prompt"), str):
            raise FieldError("prompt: field required (a string)", "prompt")
        messages: Any = [{"role": "user", "content": body["prompt"]}]
        if body.get("system"):
            messages.insert(0, {"role": "system", "content": body["system"]})
    else:
        if "messages" not in body:
            raise FieldError("messages: field required", "messages")
        messages = _messages_in(body["messages"])
    opts = body.get("options") or {}
    if not isinstance(opts, dict):
        raise FieldError("options: must be an object", "options")
    data: dict[str, Any] = {
        "messages": messages,
        "model": gw.resolve_model(body.get("model")),
        "stream": body.get("stream", True),
        "hints": header_hints(request),
        "include_usage": True,
    }
    for k, field in _OPTIONS.items():
        v = opts.get(k)
        if v is not None and not (k == "num_predict" and isinstance(v, int) and v < 0):
            data[field] = [v] if k == "stop" and isinstance(v, str) else v
    if body.get("tools"):
        data["tools"] = body["tools"]
    fmt = body.get("format")
    if fmt == "json":
        data["extra"] = {"response_format": {"type": "json_object"}}
    elif isinstance(fmt, dict):
        data["extra"] = {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "format", "schema": fmt},
            }
        }
    return chat_request(data, request)


class _Ollama(WireFormat):
    media_type = _NDJSON

    def __init__(self, *, generate: bool) -> None:
        self.generate = generate
        self.route = "/api/generate" if generate else "/api/chat"

    def parse(self, body: Any, request: Request, gw: Gateway) -> ChatRequest:
        return parse(body, request, gw, generate=self.generate)

    def error(self, e: TierlmError, headers: dict[str, str] | None) -> Response:
        return ollama_error(e, headers)

    def whole(
        self, gw: Gateway, req: ChatRequest, plan: Plan, resp: ChatResponse, started: float
    ) -> dict[str, Any]:
        return _whole(gw, req, plan, resp, started, self.generate)

    def stream(
        self, req: ChatRequest, rs: RoutedStream, first: StreamEvent, end: StreamEnd
    ) -> AsyncIterator[bytes]:
        return _ndjson(req, rs, first, end, self.generate)


chat = _Ollama(generate=False).handle
generate = _Ollama(generate=True).handle


def _final(model: str, usage: Usage, finish: str, started: float) -> dict[str, Any]:
    total = int((time.perf_counter() - started) * 1e9)
    return {
        "model": model,
        "created_at": _now(),
        "done": True,
        "done_reason": "stop" if finish == "tool_calls" else finish,
        "total_duration": total,
        "load_duration": 0,
        "prompt_eval_count": usage.prompt_tokens,
        "prompt_eval_duration": 0,
        "eval_count": usage.completion_tokens,
        "eval_duration": total,
    }


def _whole(
    gw: Gateway, req: ChatRequest, plan: Plan, resp: ChatResponse, started: float, generate: bool
) -> dict[str, Any]:
    out = _final(resp.model, resp.usage, resp.finish_reason, started)
    if generate:
        out["response"] = resp.text
    else:
        msg: dict[str, Any] = {"role": "assistant", "content": resp.text}
        if resp.message.tool_calls:
            msg["tool_calls"] = _tool_calls_out(resp.message.tool_calls)
        out["message"] = msg
    out["tierlm"] = gw.tierlm_object(req, plan, resp.tier, resp.backend, resp.cascade)
    return out


async def _ndjson(
    req: ChatRequest, rs: RoutedStream, first: StreamEvent, end: StreamEnd, generate: bool
) -> AsyncIterator[bytes]:
    """The committed stream as Ollama NDJSON; an error after commit ends it with an
    ``{"error": ...}`` line, never a ``done`` one."""
    model = first.model or rs.model or ""
    usage: Usage | None = None
    finish: str | None = None
    calls: dict[int, dict[str, Any]] = {}
    try:
        async for ev in chain(first, rs):
            model = ev.model or model
            usage = ev.usage or usage
            finish = ev.finish_reason or finish
            for d in ev.tool_calls or ():  # Ollama sends whole calls: gather the deltas
                merge_tool_call_delta(calls, d)
            if ev.text:
                yield _piece(model, ev.text, generate)
        if calls and not generate:
            message = {
                "role": "assistant",
                "content": "",
                "tool_calls": _tool_calls_out([calls[i] for i in sorted(calls)]),
            }
            yield (
                dumps({"model": model, "created_at": _now(), "done": False, "message": message})
                + b"\n"
            )
        if finish is None:
            raise unfinished(req, rs)
        last = _final(model, usage or Usage(), finish, end.started)
        if generate:
            last["response"] = ""
        else:
            last["message"] = {"role": "assistant", "content": ""}
        yield dumps(last) + b"\n"
    except Exception as e:  # any failure (logged with its cause) ends it with an in-band error
        err = end.fail(e, req)
        yield dumps({"error": err.message}) + b"\n"
    finally:
        await end()


def _piece(model: str, text: str, generate: bool) -> bytes:
    line: dict[str, Any] = {"model": model, "created_at": _now(), "done": False}
    if generate:
        line["response"] = text
    else:
        line["message"] = {"role": "assistant", "content": text}
    return dumps(line) + b"\n"


def _model_entry(gw: Gateway, name: str, kind: str) -> dict[str, Any]:
    b = gw.backend_configs.get(name)
    return {
        "name": name,
        "model": name,
        "modified_at": datetime.fromtimestamp(gw.started, UTC).isoformat(),
        "size": 0,
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf" if b and b.kind == "llama_cpp" else "",
            "family": kind,
            "families": [kind],
            "parameter_size": "",
            "quantization_level": "",
        },
    }


async def tags(request: Request) -> Response:
    """``auto``, the tiers and the backends the caller's key may use (as ``/v1/models``)."""
    gw: Gateway = request.app.state.gateway
    try:
        key = gw.keys.identify(request.headers)
    except TierlmError as e:
        return ollama_error(e)
    models = [_model_entry(gw, "auto", "auto")]
    models += [_model_entry(gw, t, "tier") for t in gw.tiers if gw.allowed(t, key)]
    models += [
        _model_entry(gw, b, "backend")
        for b in gw.backend_configs
        if b not in gw.tiers and gw.allowed(b, key)
    ]
    return json_response({"models": models})


async def show(request: Request) -> Response:
    """One model's details; a model the key may not use is as unknown as a missing one."""
    gw: Gateway = request.app.state.gateway
    try:
        key = gw.keys.identify(request.headers)
        body = await read_json(request, gw.max_body)
        if not isinstance(body, dict):
            raise FieldError("request body must be a JSON object")
        name = body.get("model") or body.get("name")
        if not isinstance(name, str):
            raise FieldError("model: field required (a string)", "model")
        resolved = gw.resolve_model(name)
        if not gw.allowed(resolved, key):
            raise ModelNotFound(f"model {name!r} does not exist")
    except TierlmError as e:
        return ollama_error(e)
    entry = _model_entry(gw, resolved, "auto" if resolved == "auto" else "tierlm")
    tools = any(b.tools is not False for b in gw.settings.backends)
    return json_response(
        {
            "modelfile": "",
            "parameters": "",
            "template": "",
            "details": entry["details"],
            "model_info": {},
            "capabilities": ["completion", *(["tools"] if tools else [])],
            "modified_at": entry["modified_at"],
        }
    )


async def version(request: Request) -> Response:
    return json_response({"version": __version__})
