"""Answer-checked escalation: the cheap tier answers, the judge scores it, and an answer below
the bar goes to the next stronger tier of the plan.

:class:`Cascade` wraps the :class:`~tierlm.execute.executor.Executor` with the same two calls.
A tier cascades when its configuration has ``cascade:`` (``threshold``, ``mode``,
``check_chars``; :class:`~tierlm.config.settings.CascadeConfig`) or the request carries the
hint ``tierlm.cascade`` (``true``, ``false``, or ``{"threshold", "mode"}``, overriding the
tier's values). A tier without a configured threshold uses the one ``tierlm learn --write``
stored (:mod:`tierlm.learn`), else the judge's default. Without a ``cascade:`` or the hint,
both calls are the executor's, unchanged.

``complete()``: the executor answers from the plan as always (retries and fallbacks
included). If the tier that answered cascades, :class:`~tierlm.judge.Judge` scores the answer;
at or above the threshold it is returned (``accept``). Below it, the candidates of the plan
from *stronger* tiers (in plan order) get the request; their answer is judged again if their
tier cascades too. Only plan candidates are ever used, so privacy, key and budget limits hold
exactly as for any fallback (a private request has no external candidate; a budget refusal
skips a candidate). When no stronger candidate exists or all of them fail, the cheap answer
is returned after all (``keep``).

``stream()``, by the answering tier's ``mode``:

- ``buffer`` (default): the cheap answer is produced whole (not streamed), judged, and sent as
  one piece if accepted; if not, the stronger tiers' answer streams through (unjudged: one
  escalation step per stream). Every check runs, but the first token waits for the whole
  cheap answer (small models are fast).
- ``stream``: the cheap answer streams, but its first ``check_chars`` characters are held
  back and checked for a refusal, the wrong language, looping or an empty answer; if one
  fires, the cheap stream is dropped and the stronger tiers answer. Otherwise the pieces
  flow on and the full judgement is recorded when the answer ends (``late_fail`` when it is
  below the threshold: what was sent cannot be taken back). Faster first token, weaker check.

A request with the hint ``tierlm.consensus: k`` is answered by k candidates in parallel
instead (:mod:`tierlm.execute.consensus`; streams are buffered).

Every judged attempt carries ``judge_score`` and ``judge_decision`` (``accept``, ``escalate``,
``keep``, ``late_fail``) in its :class:`AttemptRecord`; the answer carries the same trail in
``ChatResponse.cascade`` (the ``tierlm.cascade`` object of the gateway's reply).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from tierlm.errors import TierlmError
from tierlm.execute.consensus import consensus
from tierlm.execute.executor import Executor
from tierlm.execute.streams import RoutedStream
from tierlm.judge import Judge, Verdict, case_for
from tierlm.types import CascadeHint, ChatRequest, ChatResponse, Plan, StreamEvent

if TYPE_CHECKING:
    from tierlm.config.settings import CascadeConfig
    from tierlm.ledger.records import AttemptRecord

log = logging.getLogger(__name__)
Decision = Literal["accept", "escalate", "keep", "late_fail"]


@dataclass(frozen=True, slots=True)
class Rule:
    """The cascade settings in force for one tier's answer to one request."""

    threshold: float
    mode: Literal["buffer", "stream"]
    check_chars: int


def threshold_for(
    cfg: CascadeConfig | None,
    learned: float | None,
    default: float,
    hint: CascadeHint | None = None,
) -> float:
    """The bar for a tier's answers: the request's hint, the tier's configured threshold,
    the learned one (``tierlm learn --write``), else the judge's default."""
    for t in (
        hint.threshold if hint else None,
        cfg.threshold if cfg else None,
        learned,
    ):
        if t is not None:
            return t
    return default


class Cascade:
    """The executor with answer-checked escalation (see module docstring)."""

    def __init__(
        self,
        executor: Executor,
        tiers: Sequence[tuple[str, CascadeConfig | None]],
        judge: Judge | None = None,
        learned: Mapping[str, float] | None = None,
    ) -> None:
        self.executor = executor
        self.learned = dict(learned or {})  # tier -> threshold from `tierlm learn --write`
        self.order = {name: i for i, (name, _) in enumerate(tiers)}  # cheapest first
        self.configs: Mapping[str, CascadeConfig | None] = dict(tiers)
        self._judge = judge

    @property
    def judge(self) -> Judge:
        if self._judge is None:
            self._judge = Judge()
        return self._judge

    def rule(self, request: ChatRequest, tier: str) -> Rule | None:
        """The settings for ``tier``'s answer to ``request``, or None: no check."""
        from tierlm.config.settings import CascadeConfig

        hint = request.hints.cascade
        cfg = self.configs.get(tier)
        if hint is False or (cfg is None and not hint):
            return None
        h = hint if isinstance(hint, CascadeHint) else CascadeHint()
        base = cfg or CascadeConfig()
        threshold = threshold_for(cfg, self.learned.get(tier), self.judge.threshold, h)
        return Rule(threshold, h.mode or base.mode, base.check_chars)

    def _active(self, request: ChatRequest, plan: Plan) -> bool:
        return bool(request.hints.consensus) or any(
            self.rule(request, c.tier) for c in plan.candidates
        )

    def stronger(self, plan: Plan, tier: str) -> Plan | None:
        """The plan's candidates from tiers stronger than ``tier``, in plan order."""
        rank = self.order.get(tier, len(self.order))
        cands = [c for c in plan.candidates if self.order.get(c.tier, -1) > rank]
        return replace(plan, candidates=cands) if cands else None

    def _above(self, plan: Plan, tiers: list[str]) -> Plan | None:
        """The plan's candidates stronger than every tier in ``tiers``."""
        return self.stronger(plan, max(tiers, key=lambda t: self.order.get(t, -1)))

    def verdict(self, request: ChatRequest, resp: ChatResponse) -> Verdict:
        calls = [tc.model_dump() for tc in resp.message.tool_calls or []]
        case = case_for(
            request, resp.text, finish_reason=resp.finish_reason, tool_calls=calls or None
        )
        return self.judge.judge(case)

    # ------------------------------------------------------------------ complete

    async def complete(
        self, request: ChatRequest, plan: Plan, attempts: list[AttemptRecord] | None = None
    ) -> ChatResponse:
        """The accepted answer (or the best one there is); every attempt is recorded."""
        attempts = attempts if attempts is not None else []
        if request.hints.consensus:
            return await consensus(
                self.executor, request, plan, attempts, request.hints.consensus, self._above
            )
        resp = await self.executor.complete(request, plan, attempts)
        if not self._active(request, plan):
            return resp
        trail: list[dict[str, Any]] = []
        while True:
            rule = self.rule(request, resp.tier)
            if rule is None:
                break
            v = self.verdict(request, resp)
            nxt = self.stronger(plan, resp.tier)
            if v.score >= rule.threshold or nxt is None:
                _note(attempts, trail, resp, v, "accept" if v.score >= rule.threshold else "keep")
                break
            _note(attempts, trail, resp, v, "escalate")
            try:
                resp = await self.executor.complete(request, nxt, attempts)
            except TierlmError as e:
                log.info("escalation of %s failed: %s", request.request_id, e.code)
                _redecide(attempts, trail, "keep", f"escalation failed: {e.code}")
                break
        resp.cascade = trail or None
        return resp

    # ------------------------------------------------------------------ stream

    def stream(self, request: ChatRequest, plan: Plan) -> RoutedStream:
        """The accepted answer piece by piece (``buffer`` or ``stream`` mode, see above)."""
        if not self._active(request, plan):
            return self.executor.stream(request, plan)
        rs = RoutedStream(plan)
        rs._events = self._stream(request, plan, rs)
        return rs

    async def _stream(
        self, request: ChatRequest, plan: Plan, rs: RoutedStream
    ) -> AsyncIterator[StreamEvent]:
        first = plan.candidates[0].tier if plan.candidates else ""
        rule = self.rule(request, first)
        if request.hints.consensus:  # k whole answers to compare: always buffered
            t0 = time.perf_counter()
            whole = request.model_copy(update={"stream": False})
            async for ev in _replay(await self.complete(whole, plan, rs.attempts), rs, t0):
                yield ev
            return
        if rule is not None and rule.mode == "stream":
            async for ev in self._stream_through(request, plan, rs, rule):
                yield ev
            return
        t0 = time.perf_counter()
        whole = request.model_copy(update={"stream": False})
        resp = await self.executor.complete(whole, plan, rs.attempts)
        rule = self.rule(request, resp.tier)
        nxt = self.stronger(plan, resp.tier)
        if rule is not None:
            v = self.verdict(request, resp)
            ok = v.score >= rule.threshold
            trail: list[dict[str, Any]] = []
            _note(rs.attempts, trail, resp, v, "accept" if ok else "escalate" if nxt else "keep")
            if not ok and nxt is not None:
                try:
                    async for ev in self._escalated_stream(request, nxt, rs, t0):
                        yield ev
                    return
                except TierlmError as e:
                    if rs.ttft_ms is not None:
                        raise  # pieces of the stronger answer were sent: nothing to fall back on
                    _redecide(rs.attempts, trail, "keep", f"escalation failed: {e.code}")
        async for ev in _replay(resp, rs, t0):
            yield ev

    async def _stream_through(
        self, request: ChatRequest, plan: Plan, rs: RoutedStream, rule: Rule
    ) -> AsyncIterator[StreamEvent]:
        t0 = time.perf_counter()
        inner = self.executor.stream(request, plan, rs.attempts)
        held: list[StreamEvent] = []
        text: list[str] = []
        released = False
        async for ev in inner:
            _follow(rs, inner)
            if ev.text:
                text.append(ev.text)
            if released:
                yield _mark_first(rs, t0, ev)
                continue
            held.append(ev)
            if sum(map(len, text)) < rule.check_chars and ev.finish_reason is None:
                continue
            reasons = self.judge.early_reasons(request.prompt_text, "".join(text))
            nxt = self.stronger(plan, inner.tier or "")
            if reasons and nxt is not None:
                await inner.aclose()
                _early_escalation(rs.attempts, inner, reasons)
                async for out in self._escalated_stream(request, nxt, rs, t0):
                    yield out
                return
            released = True
            for h in held:
                yield _mark_first(rs, t0, h)
        _follow(rs, inner)
        resp = ChatResponse(
            model=inner.model or "",
            message={"role": "assistant", "content": "".join(text)},
            finish_reason=inner.finish_reason or "stop",
            backend=inner.backend or "",
            tier=inner.tier or "",
        )
        v = self.verdict(request, resp)
        _note(rs.attempts, [], resp, v, "accept" if v.score >= rule.threshold else "late_fail")

    async def _escalated_stream(
        self, request: ChatRequest, plan: Plan, rs: RoutedStream, t0: float
    ) -> AsyncIterator[StreamEvent]:
        inner = self.executor.stream(request, plan, rs.attempts)
        async for ev in inner:
            _follow(rs, inner)
            yield _mark_first(rs, t0, ev)
        _follow(rs, inner)


def _note(
    attempts: list[AttemptRecord],
    trail: list[dict[str, Any]],
    resp: ChatResponse,
    v: Verdict,
    decision: Decision,
) -> None:
    """Record the verdict on the attempt that gave ``resp`` and in the answer's trail."""
    for a in reversed(attempts):
        if a.outcome == "ok" and a.backend == resp.backend and a.judge_score is None:
            a.judge_score, a.judge_decision = round(v.score, 4), decision
            break
    trail.append(
        {
            "tier": resp.tier,
            "backend": resp.backend,
            "score": round(v.score, 4),
            "decision": decision,
            "reasons": v.reasons,
        }
    )


def _redecide(
    attempts: list[AttemptRecord], trail: list[dict[str, Any]], decision: Decision, why: str
) -> None:
    """The last escalation came to nothing: its cheap answer is kept after all."""
    last = trail[-1]
    last["decision"] = decision
    last["reasons"] = [*last["reasons"], why]
    for a in reversed(attempts):
        if a.judge_decision == "escalate":
            a.judge_decision = decision
            break


def _early_escalation(
    attempts: list[AttemptRecord], inner: RoutedStream, reasons: list[str]
) -> None:
    for a in reversed(attempts):
        if a.backend == inner.backend and a.judge_decision is None:
            a.judge_score, a.judge_decision = 0.0, "escalate"
            break
    log.info("early check escalated the stream from %s: %s", inner.backend, "; ".join(reasons))


def _follow(rs: RoutedStream, inner: RoutedStream) -> None:
    """The outer stream reports what the inner one is doing."""
    rs.tier, rs.backend, rs.model = inner.tier, inner.backend, inner.model
    rs.usage, rs.finish_reason, rs.continued = inner.usage, inner.finish_reason, inner.continued


def _mark_first(rs: RoutedStream, t0: float, ev: StreamEvent) -> StreamEvent:
    if rs.ttft_ms is None and (ev.text or ev.tool_calls):
        rs.ttft_ms = (time.perf_counter() - t0) * 1000.0
    return ev


async def _replay(resp: ChatResponse, rs: RoutedStream, t0: float) -> AsyncIterator[StreamEvent]:
    """A whole answer as a stream: its text (and tool calls) as one piece, then the end."""
    rs.tier, rs.backend, rs.model = resp.tier, resp.backend, resp.model
    calls = [{"index": i, **tc.model_dump()} for i, tc in enumerate(resp.message.tool_calls or [])]
    if resp.text or calls:
        yield _mark_first(rs, t0, StreamEvent(text=resp.text, tool_calls=calls or None))
    rs.usage, rs.finish_reason = resp.usage, resp.finish_reason
    yield StreamEvent(finish_reason=resp.finish_reason, usage=resp.usage, model=resp.model)
