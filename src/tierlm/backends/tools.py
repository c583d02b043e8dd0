"""Prompt-based tool calling for models without native support.

A client sends OpenAI ``tools``; a backend that cannot call tools natively gets, instead, a
system prompt (:func:`tool_prompt`) asking for one JSON reply of the form
``{"tool_calls": [{"name": ..., "arguments": {...}}]}`` (or plain text when no tool is
needed). The reply is read back by :func:`parse_tool_calls`, which is forgiving about what
small models write (code fences, prose around the JSON, single quotes, trailing commas,
Python literals, a truncated tail, several calls, the OpenAI ``function`` shape) and strict
about what it returns: each call names a known tool and its arguments pass the tool's JSON
schema (required fields, types, enums, nested objects), so clients get OpenAI-shaped
``tool_calls`` from any tier.

:func:`tool_call_schema` gives the same reply format as a JSON schema, for backends that can
constrain decoding with it (llama.cpp grammars), which makes even tiny models reliable.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from tierlm.backends.base import tool_calls_to_deltas
from tierlm.types import ChatRequest, ChatResponse, Message, StreamEvent, ToolCall

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


# ------------------------------------------------------------------------------ the prompt


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    fn = tool.get("function", tool)
    return fn if isinstance(fn, dict) else {}


def tool_names(tools: list[dict[str, Any]]) -> list[str]:
    return [str(_function(t).get("name")) for t in tools if _function(t).get("name")]


def forced_tool(tool_choice: str | dict[str, Any] | None) -> str | None:
    """The tool name a ``tool_choice`` object forces, if any."""
    if isinstance(tool_choice, dict):
        fn = tool_choice.get("function") or {}
        name = fn.get("name") if isinstance(fn, dict) else None
        return str(name) if name else (str(tool_choice["name"]) if "name" in tool_choice else None)
    return None


def tool_prompt(
    tools: list[dict[str, Any]], tool_choice: str | dict[str, Any] | None = None
) -> str:
    """System text that describes the tools and asks for a JSON reply to call them."""
    if tool_choice == "none" or not tools:
        return ""
    lines = [
        "You can call the following tools. Each has a name, a description and the JSON "
        "schema of its arguments.",
        "",
    ]
    for t in tools:
        fn = _function(t)
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        desc = fn.get("description") or ""
        lines.append(f"- {fn.get('name')}: {desc}".rstrip(": ").rstrip())
        lines.append(f"  arguments schema: {json.dumps(params, separators=(',', ':'))}")
    lines += [
        "",
        "To call tools, reply with ONLY this JSON, and nothing before or after it:",
        '{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments>}}]}',
        "Put several calls in the list to call several tools.",
    ]
    forced = forced_tool(tool_choice)
    if forced:
        lines.append(f"You must call the tool `{forced}` now.")
    elif tool_choice == "required":
        lines.append("You must call at least one tool now.")
    else:
        lines.append("If no tool is needed, answer the user in plain text, without JSON.")
    return "\n".join(lines)


def tool_call_schema(
    tools: list[dict[str, Any]], tool_choice: str | dict[str, Any] | None = None
) -> dict[str, Any]:
    """JSON schema of the reply :func:`tool_prompt` asks for (for constrained decoding).

    Unless a tool call is required, the schema also allows ``{"answer": "<text>"}``.
    """
    forced = forced_tool(tool_choice)
    variants = []
    for t in tools:
        fn = _function(t)
        if not fn.get("name") or (forced and fn["name"] != forced):
            continue
        params = fn.get("parameters") or {"type": "object"}
        variants.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn["name"]}, "arguments": params},
                "required": ["name", "arguments"],
            }
        )
    calls = {
        "type": "object",
        "properties": {
            "tool_calls": {
                "type": "array",
                "minItems": 1,
                "items": {"anyOf": variants} if len(variants) > 1 else variants[0],
            }
        },
        "required": ["tool_calls"],
    }
    if forced or tool_choice == "required":
        return calls
    answer = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    }
    return {"anyOf": [calls, answer]}


# ------------------------------------------------------------------------------ parsing


def parse_tool_calls(text: str, tools: list[dict[str, Any]]) -> list[ToolCall] | None:
    """The valid tool calls in ``text``, or None when it is a plain answer.

    A call naming an unknown tool, or whose arguments fail the tool's schema, is dropped.
    """
    schemas = {
        str(_function(t).get("name")): _function(t).get("parameters") or {}
        for t in tools
        if _function(t).get("name")
    }
    for block in _blocks(text):
        found: list[ToolCall] = []
        for value in _values_in(block):
            for name, args in _call_shapes(value):
                if name not in schemas or not isinstance(args, dict):
                    continue
                args = _coerce(args, schemas[name])
                if validate(args, schemas[name]):
                    continue
                found.append(
                    ToolCall(
                        id="call_" + uuid.uuid4().hex[:24],
                        function={"name": name, "arguments": json.dumps(args, ensure_ascii=False)},
                    )
                )
        if found:
            return found
    return None


def plain_answer(text: str) -> str:
    """Unwrap ``{"answer": "..."}`` (the constrained-decoding form of a plain answer)."""
    stripped = text.strip()
    if stripped.startswith("{"):
        for value in _json_values(stripped):
            if isinstance(value, dict) and isinstance(value.get("answer"), str):
                return str(value["answer"])
            break
    return text


def _call_shapes(value: Any) -> Iterator[tuple[str, Any]]:
    """(name, arguments) pairs from the shapes models use for tool calls."""
    if isinstance(value, list):
        for v in value:
            yield from _call_shapes(v)
        return
    if not isinstance(value, dict):
        return
    for key in ("tool_calls", "tools", "calls", "function_calls"):
        if isinstance(value.get(key), list):
            yield from _call_shapes(value[key])
            return
    if isinstance(value.get("function"), dict):
        yield from _call_shapes(value["function"])
        return
    name = value.get("name") or value.get("tool") or value.get("tool_name")
    if not isinstance(name, str):
        return
    args: Any = {}
    for key in ("arguments", "parameters", "args", "input", "tool_input"):
        if key in value:
            args = value[key]
            break
    if isinstance(args, str):
        parsed = list(_json_values(args))
        args = parsed[0] if parsed else None
    yield name, args


def _json_values(text: str) -> Iterator[Any]:
    """Every JSON object or array in ``text``: fenced blocks first, then the bare text."""
    for block in _blocks(text):
        yield from _values_in(block)


def _blocks(text: str) -> list[str]:
    blocks = [m.group(1) for m in _FENCE.finditer(text)]
    if "```" in text and not blocks:  # an unclosed fence: take what follows it
        blocks = [text.split("```", 1)[1].partition("\n")[2]]
    return [*blocks, text]


def _values_in(block: str) -> Iterator[Any]:
    i = 0
    while True:
        starts = [p for p in (block.find("{", i), block.find("[", i)) if p >= 0]
        if not starts:
            return
        start = min(starts)
        raw, end = _balanced(block, start)
        value = _loads_lenient(raw)
        if value is _FAIL:
            i = start + 1
            continue
        yield value
        i = end


_FAIL = object()


def _balanced(text: str, start: int) -> tuple[str, int]:
    """The bracketed span from ``start`` (closed for it if the text stops early)."""
    stack: list[str] = []
    quote = ""
    i = start
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "{[":
            stack.append("}" if c == "{" else "]")
        elif c in "}]":
            if not stack or stack.pop() != c:
                return text[start : i + 1], i + 1
            if not stack:
                return text[start : i + 1], i + 1
        i += 1
    tail = quote + "".join(reversed(stack))
    return text[start:] + tail, len(text)


def _loads_lenient(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        pass
    try:
        return json.loads(_repair(raw))
    except ValueError:
        return _FAIL


def _repair(raw: str) -> str:
    """Single-quoted strings, trailing commas and Python literals, made into JSON."""
    out: list[str] = []
    i = 0
    n = len(raw)
    while i < n:
        c = raw[i]
        if c in "\"'":
            j = i + 1
            buf: list[str] = []
            while j < n and raw[j] != c:
                if raw[j] == "\\" and j + 1 < n:
                    buf.append(raw[j : j + 2])
                    j += 2
                    continue
                buf.append('\\"' if raw[j] == '"' else raw[j])
                j += 1
            s = "".join(buf).replace("\\'", "'")
            out.append('"' + s + '"')
            i = j + 1
            continue
        if c == ",":
            k = i + 1
            while k < n and raw[k].isspace():
                k += 1
            if k < n and raw[k] in "}]":
                i += 1
                continue
        if c.isalpha():
            j = i
            while j < n and (raw[j].isalnum() or raw[j] == "_"):
                j += 1
            word = raw[i:j]
            out.append({"True": "true", "False": "false", "None": "null"}.get(word, word))
            i = j
            continue
        out.append(c)
        i += 1
    return "".join(out)


# ------------------------------------------------------------------------------ validation


def validate(value: Any, schema: dict[str, Any], path: str = "arguments") -> list[str]:
    """Problems of ``value`` against a JSON schema (the subset tools use); empty when valid."""
    if not isinstance(schema, dict) or not schema:
        return []
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            if any(not validate(value, s, path) for s in schema[key]):
                return []
            return [f"{path}: matches none of {key}"]
    problems: list[str] = []
    typ = schema.get("type")
    if typ is not None:
        types = typ if isinstance(typ, list) else [typ]
        ok = any(
            isinstance(value, _JSON_TYPES.get(t, (object,)))
            and not (t in ("integer", "number") and isinstance(value, bool))
            for t in types
        )
        if not ok and not ("integer" in types and isinstance(value, float) and value.is_integer()):
            return [f"{path}: expected {'/'.join(map(str, types))}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        problems.append(f"{path}: must be {schema['const']!r}")
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for req in schema.get("required") or []:
            if req not in value:
                problems.append(f"{path}: missing required '{req}'")
        for k, v in value.items():
            if k in props:
                problems += validate(v, props[k], f"{path}.{k}")
            elif schema.get("additionalProperties") is False:
                problems.append(f"{path}: unexpected '{k}'")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            problems += validate(v, schema["items"], f"{path}[{i}]")
    return problems


def _coerce(args: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Numbers and booleans written as strings, made into what the schema asks for."""
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict):
        return args
    out = dict(args)
    for k, v in args.items():
        typ = (props.get(k) or {}).get("type")
        if not isinstance(v, str):
            continue
        try:
            if typ == "integer" and re.fullmatch(r"-?\d+", v.strip()):
                out[k] = int(v)
            elif typ == "number" and re.fullmatch(r"-?\d+(\.\d+)?", v.strip()):
                out[k] = float(v)
            elif typ == "boolean" and v.strip().lower() in ("true", "false"):
                out[k] = v.strip().lower() == "true"
        except ValueError:
            continue
    return out


# ------------------------------------------------------------------------------ adapters


def prompt_request(request: ChatRequest) -> ChatRequest:
    """The request a tool-less backend gets: tools described in the system message, earlier
    tool calls and results written out as text, and no ``tools`` field."""
    text = tool_prompt(request.tools or [], request.tool_choice)
    messages: list[Message] = []
    for m in request.messages:
        if m.role == "assistant" and m.tool_calls:
            calls = [
                {
                    "name": c.function.get("name"),
                    "arguments": _args_value(c.function.get("arguments")),
                }
                for c in m.tool_calls
            ]
            messages.append(Message(role="assistant", content=json.dumps({"tool_calls": calls})))
        elif m.role == "tool":
            messages.append(Message(role="user", content=f"Tool result: {m.text}"))
        else:
            messages.append(m)
    if messages and messages[0].role in ("system", "developer"):
        first = messages[0]
        messages[0] = Message(role="system", content=f"{first.text}\n\n{text}")
    else:
        messages.insert(0, Message(role="system", content=text))
    return request.model_copy(update={"messages": messages, "tools": None, "tool_choice": None})


def wants_prompt_tools(request: ChatRequest) -> bool:
    """Whether a request asks for tools (and does not switch them off)."""
    return bool(request.tools) and request.tool_choice != "none"


def constrained_request(request: ChatRequest, mode: str | None = "json_object") -> ChatRequest:
    """:func:`prompt_request`, plus a ``response_format`` that constrains the reply to the
    tool-call schema: ``json_object`` (llama.cpp, in-process or server), ``json_schema``
    (vLLM, SGLang), or None (prompt only). A caller's own ``response_format`` wins."""
    plain = prompt_request(request)
    if mode and "response_format" not in request.extra:
        schema = tool_call_schema(request.tools or [], request.tool_choice)
        fmt: dict[str, Any] = (
            {"type": "json_object", "schema": schema}
            if mode == "json_object"
            else {"type": "json_schema", "json_schema": {"name": "tool_calls", "schema": schema}}
        )
        plain.extra = {**plain.extra, "response_format": fmt}
    return plain


def _args_value(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def finish_response(response: ChatResponse, request: ChatRequest) -> ChatResponse:
    """Turn a JSON tool-call reply into OpenAI ``tool_calls`` (or unwrap a plain answer)."""
    calls = parse_tool_calls(response.text, request.tools or [])
    if calls:
        response.message = Message(role="assistant", content=None, tool_calls=calls)
        response.finish_reason = "tool_calls"
    else:
        response.message = Message(role="assistant", content=plain_answer(response.text))
    return response


async def finish_stream(
    events: AsyncIterator[StreamEvent], request: ChatRequest
) -> AsyncIterator[StreamEvent]:
    """Buffer a stream whose reply may be a tool call; emit ``tool_calls`` deltas or the text
    at its end, then the final event."""
    parts: list[str] = []
    async for ev in events:
        if ev.finish_reason is None:
            parts.append(ev.text)
            continue
        text = "".join(parts)
        calls = parse_tool_calls(text, request.tools or [])
        if calls:
            yield StreamEvent(tool_calls=tool_calls_to_deltas(calls), model=ev.model)
            yield ev.model_copy(update={"finish_reason": "tool_calls"})
        else:
            answer = plain_answer(text)
            if answer:
                yield StreamEvent(text=answer, model=ev.model)
            yield ev
        return
