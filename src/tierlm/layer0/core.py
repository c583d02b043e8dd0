"""Layer 0: answers that need no model, tried by the Router before signals and policy.

1. **Rules** (:mod:`~tierlm.layer0.rules`): a configured matcher and action; the answer has
   tier ``rules``, backend ``rules``, the action's boundary (``process``, or a webhook's),
   cost 0, and is recorded in the ledger like any other.
2. **Cache** (:mod:`~tierlm.layer0.cache`): exact, then semantic; a hit has tier and backend
   ``cache``, boundary ``process``, cost 0, and ``plan.layer0["cache"]`` says how it was found
   (``hit-exact``, ``hit-semantic`` with the similarity, ``miss`` or ``bypass``).

:meth:`Layer0.early` decides (awaited: a shared cache store is never waited on by the event
loop; :meth:`Layer0.early_local` consults this process's memory only, for a caller that cannot
wait); the Router records the answer, and after a model has answered a cacheable request,
:meth:`Layer0.remember` keeps it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from tierlm.execute.streams import RoutedStream
from tierlm.layer0 import cache as cache_mod
from tierlm.layer0.rules import RuleMatch, RuleSet
from tierlm.privacy import ceiling, needs_redaction
from tierlm.types import (
    Boundary,
    Candidate,
    ChatRequest,
    ChatResponse,
    Message,
    Plan,
    Privacy,
    StreamEvent,
    Usage,
)

if TYPE_CHECKING:
    from tierlm.config.settings import ApiKeyConfig, Settings
    from tierlm.layer0.cache import AnswerCache, Lookup, Scope
    from tierlm.layer0.embed import Embedder
    from tierlm.layer0.store import Clock

# The effective privacy of a request and whether it holds anything sensitive.
PrivacyOf = Callable[[], tuple[Privacy, bool]]


@dataclass(slots=True)
class Early:
    """Layer 0's verdict on one request: answered here (``plan`` set), or not."""

    plan: Plan | None = None
    rule: RuleMatch | None = None
    hit: Lookup | None = None
    lookup: Lookup | None = None  # the cache's miss or bypass, for the model's answer
    scope: Scope | None = None  # where the model's answer may be kept (None: nowhere)
    rules_why: list[dict[str, str]] = field(default_factory=list)  # rules that did not match

    @property
    def model(self) -> str:
        if self.rule is not None:
            return f"rules/{self.rule.rule.name}"
        return self.hit.response.model if self.hit and self.hit.response else ""

    def annotate(self, plan: Plan) -> None:
        """Say on the model's plan what layer 0 did: the rules tried, the cache's verdict."""
        if self.rules_why:
            plan.layer0["rules"] = self.rules_why
        if self.lookup is not None:
            plan.layer0["cache"] = self.lookup.to_dict()


class Layer0:
    def __init__(
        self,
        settings: Settings,
        *,
        data_dir: Path | None = None,
        clock: Clock | None = None,
        embedder: Callable[[], Embedder] | None = None,
    ) -> None:
        from tierlm.layer0.embed import load_embedder

        make = embedder or lru_cache(maxsize=1)(
            lambda: load_embedder(settings.cache.semantic.embedder)
        )
        self.rules = RuleSet(settings.rules, make) if settings.rules else None
        self.cache: AnswerCache | None = None
        if settings.cache.enabled:
            from tierlm.paths import data_dir as default_data_dir

            where = data_dir or default_data_dir(settings)
            self.cache = cache_mod.AnswerCache(settings.cache, where, make, clock=clock)

    def rule_plan(
        self, request: ChatRequest, privacy: PrivacyOf, key: ApiKeyConfig | None
    ) -> tuple[Plan | None, RuleMatch | None, list[dict[str, str]]]:
        """A matching rule's plan (no action is run), and why the other rules did not match."""
        if self.rules is None:
            return None, None, []

        def may_reach(boundary: Boundary) -> str:
            """Why a webhook at ``boundary`` may not get this request's slots ("" if it may):
            slots are never redacted, so an ``enhanced`` request's stay on the site too."""
            level = privacy()[0]
            if boundary <= ceiling(level, key) and not needs_redaction(level, boundary):
                return ""
            if key is not None and boundary > ceiling(Privacy.PUBLIC, key):
                return f"api key '{key.name}' stays within {key.max_privacy_boundary}"
            return f"the request is {level.value}"

        match, why_not = self.rules.match(request, may_reach)
        if match is None:
            return None, None, why_not
        plan = Plan(
            candidates=[Candidate(backend="rules", tier="rules", boundary=match.boundary)],
            reasons=[f"rule {match.rule.name!r} {match.why}"],
            privacy=privacy()[0],
            request_id=request.request_id,
            layer0={"rule": match.rule.name, "rules": why_not},
        )
        return plan, match, why_not

    async def early(
        self, request: ChatRequest, privacy: PrivacyOf, key: ApiKeyConfig | None
    ) -> Early:
        """A rule's or the cache's answer to ``request``, if either has one."""
        early, level = self._before_cache(request, privacy, key)
        if self.cache is None or early.scope is None:
            return early
        found = await self.cache.lookup(request, early.scope, key)
        return self._cached(early, found, request, level)

    def early_local(
        self, request: ChatRequest, privacy: PrivacyOf, key: ApiKeyConfig | None
    ) -> Early:
        """As :meth:`early`, with the cache's entries in this process's memory only."""
        early, level = self._before_cache(request, privacy, key)
        if self.cache is None or early.scope is None:
            return early
        found = self.cache.lookup_local(request, early.scope, key)
        return self._cached(early, found, request, level)

    def _before_cache(
        self, request: ChatRequest, privacy: PrivacyOf, key: ApiKeyConfig | None
    ) -> tuple[Early, Privacy]:
        """A rule's answer; or where the cache would look (``scope``) and the request's
        privacy, or why it won't look (the privacy is then not read: public)."""
        plan, match, why_not = self.rule_plan(request, privacy, key)
        if match is not None:
            return Early(plan=plan, rule=match), Privacy.PUBLIC
        if self.cache is None:
            return Early(rules_why=why_not), Privacy.PUBLIC
        why = self.cache.bypass(request)
        if why is not None:
            bypass = self.cache.count(cache_mod.Lookup("bypass", why=why))
            return Early(lookup=bypass, rules_why=why_not), Privacy.PUBLIC
        level, sensitive = privacy()
        scope = self.cache.scope(request, level, sensitive)
        return Early(scope=scope, rules_why=why_not), level

    def _cached(self, early: Early, found: Lookup, request: ChatRequest, level: Privacy) -> Early:
        """``early`` with the cache's verdict: its answer (a plan), or a miss."""
        if found.response is None:
            early.lookup = found
            return early
        plan = Plan(
            candidates=[Candidate(backend="cache", tier="cache", boundary=Boundary.PROCESS)],
            reasons=[f"answered from the cache ({found.status})"],
            privacy=level,
            request_id=request.request_id,
            layer0={"cache": found.to_dict()},
        )
        return Early(plan=plan, hit=found, scope=early.scope)

    async def answer(self, early: Early, request: ChatRequest) -> ChatResponse:
        """The early answer (a rule's action runs now)."""
        t0 = time.perf_counter()
        if early.rule is not None:
            assert self.rules is not None
            resp = await self.rules.run(early.rule, request)
        else:
            assert early.hit is not None and early.hit.response is not None
            resp = early.hit.response
        resp.latency_ms = (time.perf_counter() - t0) * 1000.0
        return resp

    def stream(self, early: Early, request: ChatRequest) -> RoutedStream:
        """The early answer as a committed stream: its text, its tool calls, then the finish."""
        assert early.plan is not None
        rs = RoutedStream(early.plan)
        first = early.plan.candidates[0]
        rs.tier, rs.backend, rs.model = first.tier, first.backend, early.model
        rs._events = _replay(self, early, request, rs)
        return rs

    async def keeping(
        self,
        early: Early,
        request: ChatRequest,
        rs: RoutedStream,
        events: AsyncIterator[StreamEvent],
    ) -> AsyncIterator[StreamEvent]:
        """A model's stream (``rs``'s ``events``), passed on; once it has finished, its text is
        kept in the cache (a stream with tool calls is not kept)."""
        parts: list[str] = []
        text_only = True
        async for ev in events:
            parts.append(ev.text)
            text_only = text_only and not ev.tool_calls
            yield ev
        if early.scope is None or not text_only or rs.finish_reason is None or not rs.backend:
            return
        resp = ChatResponse(
            model=rs.model or "",
            message=Message(role="assistant", content="".join(parts)),
            finish_reason=rs.finish_reason,
            usage=rs.usage or Usage(),
            backend=rs.backend,
            tier=rs.tier or "",
        )
        await self.remember(early, request, rs.plan, resp)

    async def remember(
        self, early: Early, request: ChatRequest, plan: Plan, resp: ChatResponse
    ) -> None:
        """After a model answered a cacheable request: keep the answer."""
        if self.cache is None or early.scope is None:
            return
        boundary = next((c.boundary for c in plan.candidates if c.backend == resp.backend), None)
        if boundary is not None:
            await self.cache.store(request, early.scope, resp, boundary.label)

    async def aclose(self) -> None:
        if self.rules is not None:
            await self.rules.aclose()
        if self.cache is not None:
            await self.cache.aclose()


async def _replay(
    layer0: Layer0, early: Early, request: ChatRequest, rs: RoutedStream
) -> AsyncIterator[StreamEvent]:
    resp = await layer0.answer(early, request)
    rs.finish_reason, rs.usage = resp.finish_reason, resp.usage
    msg = resp.message
    if msg.text:
        yield StreamEvent(text=msg.text, model=resp.model)
    if msg.tool_calls:
        calls = [{"index": i, **c.model_dump(mode="json")} for i, c in enumerate(msg.tool_calls)]
        yield StreamEvent(tool_calls=calls, model=resp.model)
    yield StreamEvent(finish_reason=resp.finish_reason, usage=resp.usage, model=resp.model)
