"""Consensus for high-stakes requests (hint ``tierlm.consensus: k``): ask k, compare, return
the majority with its agreement, and escalate when they disagree.

The k answers come from the first k distinct backends of the plan, in plan order (only plan
candidates, so privacy, key and budget limits hold as for any attempt, and every call is
budgeted and recorded by the executor); when the plan has fewer backends, the first one is
sampled again (at ``temperature`` 0.7 unless the request sets one). They run in parallel.

Each answer's agreement is its mean agreement with the others
(:func:`tierlm.judge.agreement.agreement`: the same option, the same number, else word
overlap). The answer with the highest agreement wins (ties: plan order). At 0.5 or more the
answers agree and the winner is returned (``majority``; the others ``outvoted``). Below, the
request goes to the next stronger candidate of the plan not asked yet (``escalate``); with
none left the winner is returned flagged ``disagree``. The decisions are on the attempts
(``judge_score`` = agreement) and in ``ChatResponse.cascade``, as for the cascade.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tierlm.errors import TierlmError
from tierlm.judge.agreement import agreement
from tierlm.types import Candidate, ChatRequest, ChatResponse, Plan

if TYPE_CHECKING:
    from tierlm.execute.executor import Executor
    from tierlm.ledger.records import AttemptRecord

AGREE = 0.5
SAMPLE_TEMPERATURE = 0.7


def picks(plan: Plan, k: int) -> list[Candidate]:
    """k candidates: distinct backends in plan order, then the first again as extra samples."""
    seen: dict[str, Candidate] = {}
    for c in plan.candidates:
        seen.setdefault(c.backend, c)
    distinct = list(seen.values())[:k]
    return distinct + distinct[:1] * (k - len(distinct)) if distinct else []


async def consensus(
    executor: Executor,
    request: ChatRequest,
    plan: Plan,
    attempts: list[AttemptRecord],
    k: int,
    stronger: Callable[[Plan, list[str]], Plan | None],
) -> ChatResponse:
    """The majority answer of k (see module docstring)."""
    chosen = picks(plan, k)
    calls = []
    for i, cand in enumerate(chosen):
        req = request
        if i and cand.backend == chosen[0].backend and request.temperature in (None, 0.0):
            req = request.model_copy(update={"temperature": SAMPLE_TEMPERATURE})
        calls.append(executor.complete(req, replace(plan, candidates=[cand]), attempts))
    got = await asyncio.gather(*calls, return_exceptions=True)
    for r in got:
        if isinstance(r, BaseException) and not isinstance(r, TierlmError):
            raise r  # a bug or a cancellation, not a failed candidate
    answers = [r for r in got if isinstance(r, ChatResponse)]
    if not answers:
        raise next(r for r in got if isinstance(r, TierlmError))
    scores = _agreements(request.prompt_text, answers)
    best = max(range(len(answers)), key=lambda i: (scores[i], -i))
    trail: list[dict[str, Any]] = []
    if scores[best] >= AGREE or len(answers) == 1:
        _mark(attempts, trail, answers, scores, best, "majority", "outvoted")
        winner = answers[best]
    else:
        used = {c.backend for c in chosen}
        nxt = stronger(plan, [a.tier for a in answers])
        rest = [c for c in (nxt.candidates if nxt else []) if c.backend not in used]
        if rest:
            _mark(attempts, trail, answers, scores, best, "escalate", "escalate")
            winner = await executor.complete(request, replace(plan, candidates=rest), attempts)
        else:
            _mark(attempts, trail, answers, scores, best, "disagree", "disagree")
            winner = answers[best]
    winner.cascade = trail
    return winner


def _agreements(question: str, answers: Sequence[ChatResponse]) -> list[float]:
    texts = [a.text for a in answers]
    out = []
    for i, t in enumerate(texts):
        score, _ = agreement(t, texts[:i] + texts[i + 1 :], question)
        out.append(0.0 if score is None else score)
    return out


def _mark(
    attempts: list[AttemptRecord],
    trail: list[dict[str, Any]],
    answers: Sequence[ChatResponse],
    scores: Sequence[float],
    best: int,
    win: str,
    lose: str,
) -> None:
    ok = [a for a in attempts if a.outcome == "ok" and a.judge_decision is None]
    for i, (resp, score) in enumerate(zip(answers, scores, strict=True)):
        decision = win if i == best else lose
        rec = next((a for a in ok if a.backend == resp.backend), None)
        if rec is not None:
            rec.judge_score, rec.judge_decision = round(score, 4), decision
            ok.remove(rec)
        trail.append(
            {
                "tier": resp.tier,
                "backend": resp.backend,
                "score": round(score, 4),
                "decision": decision,
                "reasons": [f"agreement with {len(answers) - 1} other answer(s)"],
            }
        )
