"""Money and records around execution: the executor's hooks, backed by the ledger.

- Before an attempt on a backend that costs money, an upper bound of its cost (everything
  it can bill: :func:`~tierlm.pricing.estimate_usd`) is reserved against every budget in
  force (``BudgetExceeded`` skips that candidate; the plan goes on, to local
  tiers in the end); after it, the reservation is settled at the real cost (a failed
  attempt's: what it generated, if anything: a cut stream is billed), or released.
- Every attempt is priced (:meth:`Accounting.cost`, the executor's ``hooks.cost``) at the
  usage it is settled at, so each attempt's record and its budget settlement agree.
- After the request, one :class:`~tierlm.ledger.RequestRecord` is queued: the decision,
  every attempt, tokens, cost and outcome. Its cost is the sum of its attempts' costs: what
  every provider it reached bills (a cut stream's generated part, a cascade's rejected
  answer, every consensus member), not only the answer's (:func:`billed`; a whole answer
  carries it as ``ChatResponse.cost_usd``). Attempts carry the digest of the
  exact bytes they sent (set by the executor), from which the ledger builds its audit chain.
  A refused request is recorded with its privacy level and finding kinds. The request's
  trace, when it is traced (:mod:`tierlm.telemetry`), ends with the same facts.
- With ``ledger.commit_before_reply``, :meth:`Accounting.committed` waits until the record
  is committed, and the Router calls it before it hands an answer back (a whole reply, or a
  stream's end): every answer a client received has its record in the database, even when
  the process is killed right after.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tierlm.types import Candidate, ChatRequest, ChatResponse, Finding, Plan, Usage

if TYPE_CHECKING:
    from tierlm.config.settings import Settings
    from tierlm.errors import TierlmError
    from tierlm.ledger import AttemptRecord, BudgetState, Ledger
    from tierlm.policy import Conditions
    from tierlm.telemetry import RequestTrace


class Accounting:
    """The executor's hooks and the request records, over a ledger opened on first use."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger | None = None,
        scan_text: Callable[[str], list[Finding]] | None = None,
    ) -> None:
        self.settings = settings
        self.store_prompts = settings.ledger.store_prompts
        self._scan_text = scan_text  # finds the spans to redact in stored prompts
        self._ledger = ledger
        self._configs = {b.name: b for b in settings.backends}
        self._tier_index = {t.name: i for i, t in enumerate(settings.tiers)}
        self._budgets = bool(settings.budgets.limits)
        self._wait_for_commit = settings.ledger.commit_before_reply

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            from tierlm.ledger import open_ledger

            self._ledger = open_ledger(self.settings)
        return self._ledger

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()

    async def committed(self) -> None:
        """With ``ledger.commit_before_reply``: wait until the records queued so far are
        committed (or spilled). Otherwise return at once."""
        if self._wait_for_commit and self._ledger is not None and self._ledger.recording:
            await self._ledger.acommitted()

    def local_only(self, request: ChatRequest, cond: Conditions) -> None:
        """Sync twin of :meth:`apply_budget` (for stream set-up)."""
        if self._budgets:
            state = self.ledger.budget_state(key=request.api_key_id, tier=None)
            self._mark(request, cond, state)

    # -- before routing ---------------------------------------------------------------------
    async def apply_budget(self, request: ChatRequest, cond: Conditions) -> None:
        """Tell the policy what the budget in force excludes: everything that costs money
        (local-only), or each backend whose estimated cost does not fit, and why."""
        if self._budgets:
            state = await self.ledger.abudget_state(key=request.api_key_id, tier=None)
            self._mark(request, cond, state)

    def _mark(self, request: ChatRequest, cond: Conditions, state: BudgetState) -> None:
        if state.local_only:
            cond.local_only = True
            cond.budget_reason = state.why_not(1e-9) or "budget low"
            return
        from tierlm.pricing import estimate_usd

        over = {}
        for name, cfg in self._configs.items():
            why = state.why_not(estimate_usd(cfg, request))
            if why is not None:
                over[name] = why
        cond.over_budget = over or None

    # -- executor hooks ---------------------------------------------------------------------
    async def before_attempt(self, request: ChatRequest, candidate: Candidate) -> Any:
        if not self._budgets:
            return None
        from tierlm.pricing import estimate_usd

        usd = estimate_usd(self._configs[candidate.backend], request)  # an upper bound
        if usd <= 0:
            return None
        reservation = await self.ledger.areserve(
            request.request_id,
            key=request.api_key_id,
            tier=candidate.tier,
            backend=candidate.backend,
            usd=usd,
        )
        return (reservation, candidate.backend)

    async def after_attempt(self, token: Any, usage: Usage | None, ok: bool) -> None:
        if token is None:
            return
        reservation, backend = token
        await self.ledger.asettle(reservation, self.cost(backend, usage))  # what was billed

    def cost(self, backend: str, usage: Usage | None) -> float:
        """What ``backend`` bills for ``usage`` (0 for nothing, or for no configured backend)."""
        if usage is None:
            return 0.0
        from tierlm.pricing import cost_usd

        cfg = self._configs.get(backend)  # layer 0 (rules, cache) costs nothing
        return float(cost_usd(cfg, usage)) if cfg is not None else 0.0

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
        outcome: str | None = None,
        completion: str | None = None,
        latency_ms: float | None = None,
        ttft_ms: float | None = None,
        trace: RequestTrace | None = None,
    ) -> None:
        """Queue the request's record (the ledger spills what it cannot write) and end its
        ``trace``."""
        from tierlm.ledger import RequestRecord

        tier: str | None
        backend: str | None
        model: str | None
        usage: Usage | None
        if response is not None:
            tier, backend, model, usage = (
                response.tier,
                response.backend,
                response.model,
                response.usage,
            )
        elif streamed is not None:
            tier, backend, model, usage = streamed
        else:
            first = plan.candidates[0] if plan and plan.candidates else None
            tier, backend, model, usage = (
                first.tier if first else None,
                first.backend if first else None,
                None,
                None,
            )
        texts: dict[str, Any] = {}
        if self.store_prompts and self._scan_text is not None:
            prompt = request.prompt_text
            answer = completion if completion is not None else (response.text if response else None)
            texts = {
                "prompt": prompt,
                "prompt_spans": [(f.start, f.end, f.kind) for f in self._scan_text(prompt)],
                "completion": answer,
                "completion_spans": [(f.start, f.end, f.kind) for f in self._scan_text(answer)]
                if answer
                else [],
            }
        cfg = self._configs.get(backend or "")
        if response is not None:
            response.cost_usd = billed(attempts)
        final = error.code if error is not None else (outcome or "ok")
        if trace is not None:
            by = (tier, backend, model, usage) if response or streamed else None
            trace.finish(plan, attempts, by, final, error)
        answered = [a for a in attempts if a.outcome == "ok"]
        ok = error is None and outcome in (None, "ok")
        # escalated: answered by a stronger tier than the cheapest one the plan could use
        cheapest = min(
            (self._tier_index.get(c.tier, 0) for c in plan.candidates) if plan else (), default=99
        )
        self.ledger.record(
            RequestRecord(
                id=request.request_id,
                api_key=request.api_key_id,
                tier=tier,
                backend=backend,
                model=model,
                boundary=cfg.where.label if cfg else _planned_boundary(plan, backend),
                complexity=plan.complexity if plan else None,
                privacy=plan.privacy.value if plan else None,
                reasons=list(plan.reasons) if plan else [],
                findings=sorted({f.kind for f in plan.findings}) if plan else [],
                attempts=attempts,
                # what was billed: an answer, or what a cut or abandoned stream generated
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                cost_usd=billed(attempts),
                outcome=final,
                latency_ms=latency_ms,
                ttft_ms=ttft_ms,
                fallback=bool(answered) and len(attempts) > len(answered),
                escalated=ok and self._tier_index.get(tier or "", -1) > cheapest,
                stream=request.stream,
                client_request_id=request.client_request_id,
                batch_id=request.batch_id,
                **texts,
            )
        )


def billed(attempts: list[AttemptRecord]) -> float:
    """What a request costs: what every provider it reached bills, the sum of its attempts."""
    return sum(a.cost_usd for a in attempts)


def _planned_boundary(plan: Plan | None, backend: str | None) -> str | None:
    """The boundary a plan gave ``backend`` (a layer-0 answer has no backend config)."""
    for c in plan.candidates if plan else []:
        if c.backend == backend:
            return c.boundary.label
    return None
