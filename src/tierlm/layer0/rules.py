"""Deterministic rules: requests answered by configuration, before any model.

A rule reads the last user message. Rules are tried in order; the first whose matcher matches
(and whose action may run for this request) answers:

- ``regex``: ``re.search`` on the text; named groups are the slots.
- ``examples``: each slot's ``pattern`` is found in the text (first match, word-bounded) and
  masked as ``{slot}``; the masked text's embedding must reach ``threshold`` cosine similarity
  with one of the examples (written with the same placeholders). Every slot must be found.

Actions: ``template`` (text formatted with the slots), ``tool_call`` (an OpenAI tool call; by
default only when the client offers a tool of that name), ``callable`` (``module:function``
called with the slots and the request, returning text, or a dict with ``content`` and/or
``tool_calls``; a coroutine function is awaited, a plain one runs on the event loop, so keep
it short), ``webhook`` (``POST`` of ``{"rule", "slots", "request_id"}`` as JSON, never the
messages; the answer is JSON of the callable's shape, or plain text). A webhook's boundary
must be within what the request's privacy allows (only a ``public`` request's slots may leave
the site: there is no redaction of slots) and what the API key may reach. Its failures
map onto the error tree: a timeout is :class:`BackendTimeout`, a refused connection
:class:`BackendUnavailable`, a bad status or body :class:`BackendError`.

Rules apply to ``model: auto`` (or ``rules``); a request that pins a tier or backend goes
there. :meth:`RuleSet.match` also says, for each rule that did not match, briefly why.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from string import Formatter
from typing import TYPE_CHECKING, Any

from tierlm.errors import BackendError, BackendTimeout, BackendUnavailable, ConfigError
from tierlm.layer0.config import (
    CallableAction,
    RuleConfig,
    SlotType,
    TemplateAction,
    ToolCallAction,
    WebhookAction,
)
from tierlm.types import Boundary, ChatRequest, ChatResponse, Message, ToolCall

if TYPE_CHECKING:
    import httpx

    from tierlm.layer0.embed import Embedder, Vector

TIER = "rules"
_CAST: dict[SlotType, Callable[[str], Any]] = {"str": str, "int": int, "float": float}


@dataclass(slots=True)
class RuleMatch:
    rule: RuleConfig
    slots: dict[str, Any]
    why: str
    boundary: Boundary = Boundary.PROCESS


@dataclass(slots=True)
class _Compiled:
    cfg: RuleConfig
    regex: re.Pattern[str] | None = None
    slot_res: dict[str, re.Pattern[str]] = field(default_factory=dict)
    examples: list[Vector] = field(default_factory=list)
    target: Callable[..., Any] | None = None


class RuleSet:
    """The configured rules, compiled once (example embeddings and callables included)."""

    def __init__(self, rules: list[RuleConfig], embedder: Callable[[], Embedder]) -> None:
        self._embedder: Embedder | None = None
        self._rules: list[_Compiled] = []
        self._client: httpx.AsyncClient | None = None
        for r in rules:
            c = _Compiled(r)
            if r.match.regex is not None:
                c.regex = re.compile(r.match.regex)
            else:
                if self._embedder is None:
                    self._embedder = embedder()
                c.slot_res = {
                    n: re.compile(rf"(?<!\w)(?:{s.pattern})(?!\w)")
                    for n, s in r.match.slots.items()
                }
                c.examples = [self._embedder.embed(e) for e in r.match.examples]
            if isinstance(r.action, CallableAction):
                c.target = _import(r.action.target, r.name)
            self._rules.append(c)

    def match(
        self, request: ChatRequest, may_reach: Callable[[Boundary], str]
    ) -> tuple[RuleMatch | None, list[dict[str, str]]]:
        """The first rule that answers ``request``, and why each rule before it did not."""
        why_not: list[dict[str, str]] = []
        if request.model not in ("auto", TIER):
            return None, [{"rule": "*", "why": f"the request pins {request.model!r}"}]
        last = request.messages[-1]
        if last.role != "user" or not last.text.strip():
            return None, [{"rule": "*", "why": "the last message is not a user's text"}]
        text = last.text.strip()
        for c in self._rules:
            slots, why = self._slots(c, text)
            if slots is not None:
                blocked = self._blocked(c.cfg, request, may_reach)
                if not blocked:
                    return RuleMatch(c.cfg, slots, why, _boundary(c.cfg)), why_not
                why = blocked
            why_not.append({"rule": c.cfg.name, "why": why})
        return None, why_not

    def _slots(self, c: _Compiled, text: str) -> tuple[dict[str, Any] | None, str]:
        m = c.cfg.match
        if c.regex is not None:
            found = c.regex.search(text)
            if found is None:
                return None, "regex did not match"
            raw = {k: v for k, v in found.groupdict().items() if v is not None}
            return _typed(raw, m.types), "matched its regex"
        raw, masked = {}, text
        for name, rx in c.slot_res.items():
            hit = rx.search(masked)
            if hit is None:
                return None, f"slot {name!r} not found"
            raw[name] = hit.group()
            masked = masked[: hit.start()] + "{" + name + "}" + masked[hit.end() :]
        assert self._embedder is not None
        q = self._embedder.embed(masked)
        best = max(float(e @ q) for e in c.examples)
        if best < m.threshold:
            return None, f"similarity {best:.2f} < {m.threshold}"
        types = {n: s.type for n, s in m.slots.items()}
        return _typed(raw, types), f"matched an example (similarity {best:.2f})"

    @staticmethod
    def _blocked(
        rule: RuleConfig, request: ChatRequest, may_reach: Callable[[Boundary], str]
    ) -> str:
        a = rule.action
        if isinstance(a, ToolCallAction) and a.require_tool:
            offered = {(t.get("function") or {}).get("name") for t in request.tools or []}
            if a.name not in offered:
                return f"matched, but the client offers no tool {a.name!r}"
        if isinstance(a, WebhookAction):
            why = may_reach(a.boundary)
            if why:
                return f"matched, but its webhook is {a.boundary.label} and {why}"
        return ""

    # -- answering --------------------------------------------------------------------------
    async def run(self, match: RuleMatch, request: ChatRequest) -> ChatResponse:
        """Carry out the matched rule's action."""
        a = match.rule.action
        if isinstance(a, TemplateAction):
            message = Message(role="assistant", content=_format(a.text, match.slots))
        elif isinstance(a, ToolCallAction):
            args = {k: _fill(v, match.slots) for k, v in a.arguments.items()}
            message = _tool_message([{"name": a.name, "arguments": args}])
        elif isinstance(a, CallableAction):
            c = next(c for c in self._rules if c.cfg is match.rule)
            assert c.target is not None
            out = c.target(match.slots, request)
            if inspect.isawaitable(out):
                out = await out
            message = _message(out, match.rule.name)
        else:
            message = _message(await self._webhook(a, match, request), match.rule.name)
        return ChatResponse(
            model=f"rules/{match.rule.name}",
            message=message,
            finish_reason="tool_calls" if message.tool_calls else "stop",
            backend=TIER,
            tier=TIER,
        )

    async def _webhook(self, a: WebhookAction, match: RuleMatch, request: ChatRequest) -> Any:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        body = {"rule": match.rule.name, "slots": match.slots, "request_id": request.request_id}
        where = f"webhook:{match.rule.name}"
        try:
            r = await self._client.post(
                a.url,
                json=body,
                headers=a.headers,
                timeout=httpx.Timeout(a.timeout, connect=a.connect_timeout),
            )
        except httpx.TimeoutException as e:
            raise BackendTimeout(
                f"webhook timed out after {a.timeout}s: {e!r}", backend=where, tier=TIER
            ) from e
        except httpx.TransportError as e:
            raise BackendUnavailable(f"webhook unreachable: {e!r}", backend=where, tier=TIER) from e
        if r.status_code >= 300:
            raise BackendError(
                f"webhook answered HTTP {r.status_code}",
                upstream_status=r.status_code,
                backend=where,
                tier=TIER,
            )
        if "json" not in r.headers.get("content-type", ""):
            return r.text
        try:
            return r.json()
        except ValueError as e:
            raise BackendError(
                f"webhook answered invalid JSON: {e}", backend=where, tier=TIER
            ) from e

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def _boundary(rule: RuleConfig) -> Boundary:
    a = rule.action
    return a.boundary if isinstance(a, WebhookAction) else Boundary.PROCESS


def _typed(raw: dict[str, str], types: dict[str, SlotType]) -> dict[str, Any] | None:
    try:
        return {k: _CAST[types.get(k, "str")](v) for k, v in raw.items()}
    except ValueError:
        return None


def _format(template: str, slots: dict[str, Any]) -> str:
    names = {f for _, f, _, _ in Formatter().parse(template) if f}
    return template.format_map({n: slots.get(n, "") for n in names})


def _fill(value: Any, slots: dict[str, Any]) -> Any:
    """``"{slot}"`` alone becomes the typed slot; other strings are formatted."""
    if isinstance(value, str):
        whole = re.fullmatch(r"\{(\w+)\}", value)
        if whole and whole.group(1) in slots:
            return slots[whole.group(1)]
        return _format(value, slots)
    if isinstance(value, dict):
        return {k: _fill(v, slots) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, slots) for v in value]
    return value


def _tool_message(calls: list[dict[str, Any]], content: str | None = None) -> Message:
    return Message(
        role="assistant",
        content=content,
        tool_calls=[
            ToolCall(
                id="call_" + uuid.uuid4().hex[:24],
                function={
                    "name": str(c["name"]),
                    "arguments": c["arguments"]
                    if isinstance(c.get("arguments"), str)
                    else json.dumps(c.get("arguments") or {}, ensure_ascii=False),
                },
            )
            for c in calls
        ],
    )


def _message(out: Any, rule: str) -> Message:
    """A callable's or webhook's answer: text, or ``{"content", "tool_calls"}``."""
    if isinstance(out, str):
        return Message(role="assistant", content=out)
    if isinstance(out, dict) and ("content" in out or "tool_calls" in out):
        calls = out.get("tool_calls")
        content = out.get("content")
        if calls is None:
            return Message(role="assistant", content=str(content or ""))
        if isinstance(calls, list) and all(isinstance(c, dict) and "name" in c for c in calls):
            return _tool_message(calls, str(content) if content is not None else None)
    raise BackendError(
        f"rule {rule!r} answered {type(out).__name__}: expected text or "
        '{"content": ..., "tool_calls": [{"name": ..., "arguments": ...}]}',
        backend=f"rule:{rule}",
        tier=TIER,
    )


def _import(target: str, rule: str) -> Callable[..., Any]:
    module, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import {target}: {e}", key=f"rules.{rule}.action") from e
    if not callable(obj):
        raise ConfigError(f"{target} is not callable", key=f"rules.{rule}.action")
    return obj  # type: ignore[no-any-return]
