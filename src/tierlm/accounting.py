"""Money and records around execution: the executor's hooks, backed by the ledger.

- Before an attempt on a backend that costs money, its estimated cost is reserved against
  every budget in force (``BudgetExceeded`` skips that candidate; the plan goes on, to local
  tiers in the end); after it, the reservation is settled at the real cost, or released when
  the attempt failed (failed attempts are never billed).
- After the request, one :class:`~tierlm.ledger.RequestRecord` is queued: the decision,
  every attempt, tokens, cost and outcome. Attempts that crossed the site boundary carry a
  digest of what was sent, from which the ledger builds its audit chain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tierlm.types import Boundary, Candidate, ChatRequest, ChatResponse, Plan, Usage

if TYPE_CHECKING:
    from tierlm.config.settings import Settings
    from tierlm.errors import TierlmError
    from tierlm.ledger import AttemptRecord, Ledger
    from tierlm.policy import Conditions


class Accounting:
    def __init__(self, settings: Settings, ledger: Ledger | None) -> None:
        self.settings = settings
        self.ledger = ledger
        self._configs = {b.name: b for b in settings.backends}
        self._budgets = bool(settings.budgets.limits) and ledger is not None

    # -- before routing ---------------------------------------------------------------------
    async def apply_budget(self, request: ChatRequest, cond: Conditions) -> None:
        """Mark the conditions local-only when the budget in force says so."""
        if not self._budgets or self.ledger is None:
            return
        state = await self.ledger.abudget_state(key=request.api_key_id, tier=None)
        if state.local_only:
            cond.local_only = True
            cond.budget_reason = state.why_not(1e-9) or "budget low"

    # -- executor hooks ---------------------------------------------------------------------
    async def before_attempt(self, request: ChatRequest, candidate: Candidate) -> Any:
        if not self._budgets or self.ledger is None:
            return None
        from tierlm.pricing import estimate_usd
        from tierlm.signals.task import estimate_tokens

        cfg = self._configs[candidate.backend]
        usd = estimate_usd(cfg, request, estimate_tokens(request.prompt_text))
        if usd <= 0:
            return None
        reservation = await self.ledger.areserve(
            request.request_id, key=request.api_key_id, tier=candidate.tier,
            backend=candidate.backend, usd=usd)
        return (reservation, candidate.backend)

    async def after_attempt(self, token: Any, usage: Usage | None, ok: bool) -> None:
        if token is None or self.ledger is None:
            return
        reservation, backend = token
        usd = self.cost(backend, usage) if ok and usage is not None else 0.0
        await self.ledger.asettle(reservation, usd)

    def cost(self, backend: str, usage: Usage | None) -> float:
        if usage is None:
            return 0.0
        from tierlm.pricing import cost_usd

        return float(cost_usd(self._configs[backend], usage))

    # -- after the request ------------------------------------------------------------------
    def record(
        self,
        request: ChatRequest,
        plan: Plan | None,
        attempts: list[AttemptRecord],
        *,
        response: ChatResponse | None = None,
        streamed: tuple[str | None, str | None, str | None, Usage | None] | None = None,
        error: TierlmError | None = None,
        latency_ms: float | None = None,
        ttft_ms: float | None = None,
    ) -> None:
        """Queue the request's record (never raises: the ledger spills what it cannot write)."""
        if self.ledger is None:
            return
        from tierlm.ledger import RequestRecord, digest

        if response is not None:
            tier, backend, model, usage = (response.tier, response.backend, response.model,
                                           response.usage)
        elif streamed is not None:
            tier, backend, model, usage = streamed
        else:
            first = plan.candidates[0] if plan and plan.candidates else None
            tier, backend, model, usage = (first.tier if first else None,
                                           first.backend if first else None, None, None)
        sent = None
        for a in attempts:
            if a.boundary == Boundary.EXTERNAL.label and a.sent_digest is None:
                sent = sent or digest(request.model_dump(mode="json", include={"messages",
                                                                                "tools"}))
                a.sent_digest = sent
        cfg = self._configs.get(backend or "")
        answered = [a for a in attempts if a.outcome == "ok"]
        self.ledger.record(RequestRecord(
            id=request.request_id,
            api_key=request.api_key_id,
            tier=tier,
            backend=backend,
            model=model,
            boundary=cfg.where.label if cfg else None,
            complexity=plan.complexity if plan else None,
            privacy=plan.privacy.value if plan else None,
            reasons=list(plan.reasons) if plan else [],
            findings=sorted({f.kind for f in plan.findings}) if plan else [],
            attempts=attempts,
            prompt_tokens=usage.prompt_tokens if usage and error is None else 0,
            completion_tokens=usage.completion_tokens if usage and error is None else 0,
            cost_usd=self.cost(backend, usage) if backend and error is None else 0.0,
            outcome="ok" if error is None else error.code,
            latency_ms=latency_ms,
            ttft_ms=ttft_ms,
            fallback=bool(answered) and len(attempts) > len(answered),
            escalated=bool(plan and plan.candidates and tier and
                           tier != plan.candidates[0].tier),
            stream=request.stream,
        ))
