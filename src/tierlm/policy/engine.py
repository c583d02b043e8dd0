"""Where may a request go, and where should it go?

Constraints first, each removing candidates and saying why:

1. privacy (:mod:`tierlm.privacy` states the rules): the effective level is the strictest of
   the config default, the API key's floor and the request's hint; sensitive content raises
   ``public`` to ``private``, which keeps the request at or below ``site``. An ``enhanced``
   request (the client or key opted in to redaction) may leave the site, but the executor
   sends external backends a redacted copy only. Air-gapped deployments have no external
   backend at all (the config refuses one);
2. the API key's allowed tiers and boundary ceiling (:func:`tierlm.privacy.ceiling`);
3. a pinned model (``model`` = a tier or backend name) and the tier floor/ceiling hints;
4. the budget: when the ledger says local-only, nothing that costs money is eligible, and a
   backend whose estimated cost does not fit a budget in force is excluded, with the budget,
   what is left and the rule that excluded it;
5. capabilities: context window against the estimated prompt size;
6. health (only when live health is supplied): unhealthy backends are skipped, warm ones
   preferred;
7. energy (only with an ``energy`` section; :mod:`tierlm.policy.energy` states the rules):
   on a low battery only backends within the energy budget; a dirty grid lowers the quality
   bar; a solar surplus puts local candidates before external ones. The cached state comes
   in ``Conditions.energy``; the plan carries it and the effects as its ``energy`` object.

Within a tier, the backends that remain are ordered by fit: the one whose ``good_at``
(configured, or its provider's defaults) covers most of what the request needs (its task
kinds, domains and language, from the task signal) goes first, with a reason ("code request:
deepseek preferred"); ties keep the configured order (warm first).

Then the objective: the cheapest tier (tiers are ordered cheapest first) whose predicted
quality clears the request's bar. A tier of strength ``s`` clears the bar ``q`` for a request
of complexity ``c`` when ``c <= s + (0.5 - q)``. The rest of the eligible tiers follow as
ordered fallbacks: stronger tiers first, then weaker ones (degradation).

Every reason names the tier the plan actually chose first. One word means one thing across
plans, the ledger and ``tierlm report``: a request is **escalated** when the tier that answers
is stronger than the cheapest tier eligible for it (in a plan: "escalated past tiny"); it
**fell back** when an attempt failed and another backend answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tierlm.config.settings import ApiKeyConfig, BackendConfig, Settings, TierConfig
from tierlm.errors import BudgetExceeded, NoEligibleBackend
from tierlm.policy import energy as energy_rules
from tierlm.privacy import ceiling as privacy_ceiling
from tierlm.privacy import effective_level, key_allows_tier
from tierlm.signals.energy import EnergyState
from tierlm.signals.task import needs as task_needs
from tierlm.types import Boundary, Candidate, ChatRequest, Finding, Plan, Privacy


@dataclass(slots=True)
class Signals:
    """What the signals said about one request."""

    complexity: float
    findings: list[Finding] = field(default_factory=list)
    tokens: int = 0
    task: dict[str, object] = field(default_factory=dict)
    needs: list[str] | None = None  # good_at words; read on demand (signals.task.needs)


@dataclass(slots=True)
class Conditions:
    """The state of the world the plan is made under (all optional)."""

    healthy: Mapping[str, bool] | None = None  # backend -> usable now (None: assume healthy)
    warm: Mapping[str, bool] | None = None  # backend -> model loaded now
    local_only: bool = False  # the budget says: nothing that costs money
    budget_reason: str = ""
    over_budget: Mapping[str, str] | None = None  # backend -> why its cost does not fit now
    api_key: ApiKeyConfig | None = None
    paid: Mapping[str, bool] | None = None  # backend -> costs money (else: external = paid)
    energy: EnergyState | None = None  # the cached energy state (Router.energy)
    measured_joules: Mapping[str, float] | None = None  # backend -> measured J/token (RAPL)


class Policy:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tiers = settings.tiers
        self._backends = {b.name: b for b in settings.backends}
        self._strength = {t.name: settings.tier_strength(t) for t in self._tiers}
        # every good_at word some backend declares: what a request's needs are read for
        self._declared = frozenset().union(*(b.strengths() for b in settings.backends))

    def plan(self, request: ChatRequest, signals: Signals, cond: Conditions) -> Plan:
        reasons: list[str] = []
        privacy = self.privacy(request, signals, cond, reasons)
        ceiling = privacy_ceiling(privacy, cond.api_key)
        if cond.api_key is not None and ceiling < privacy_ceiling(privacy):
            reasons.append(f"api key '{cond.api_key.name}' stays within {ceiling.label}")
        tiers = self._eligible_tiers(request, cond, reasons)
        pinned_external = self._pinned_paid(request, cond)
        usable = self._usable(tiers, ceiling, signals, cond, reasons)
        energy = self._energy(request, cond)
        if energy is not None:
            usable = energy_rules.within_budget(usable, self._backends, energy)
            reasons.extend(f"energy: {e}" for e in energy.effects)
        for name, found in usable.items():
            usable[name] = self._by_fit(found, request, signals, reasons)
        relief = energy.quality_drop if energy is not None else 0.0
        eligible = [t for t in tiers if usable[t.name]]
        ordered = self._order(eligible, request, signals, reasons, relief)
        candidates = [c for t in ordered for c in usable[t.name]]
        if energy is not None and energy.local_first:
            candidates = energy_rules.local_first(candidates)
        if not candidates:
            if pinned_external:
                self._refuse_pinned(request, cond)
            raise NoEligibleBackend(
                "no backend may answer this request: " + "; ".join(reasons),
                request_id=request.request_id,
            )
        plan = _plan(request, signals, candidates, reasons, privacy)
        plan.energy = energy.to_dict() if energy is not None else None
        return plan

    def _energy(self, request: ChatRequest, cond: Conditions) -> energy_rules.EnergyEffects | None:
        cfg = self.settings.energy
        if cfg is None:
            return None
        state = cond.energy or EnergyState(source=cfg.source, detail="no reading supplied")
        return energy_rules.effects(cfg, state, request, cond.measured_joules or {})

    def refused(self, request: ChatRequest, signals: Signals, cond: Conditions) -> Plan:
        """What the ledger records for a request :meth:`plan` refused: no candidates, its
        privacy level and findings."""
        reasons: list[str] = []
        return _plan(request, signals, [], reasons, self.privacy(request, signals, cond, reasons))

    # -- constraints ------------------------------------------------------------------------
    def privacy(
        self, request: ChatRequest, signals: Signals, cond: Conditions, reasons: list[str]
    ) -> Privacy:
        """The request's effective privacy level (the reasons are appended to ``reasons``)."""
        return effective_level(
            self.settings.routing.default_privacy,
            cond.api_key,
            request.hints.privacy,
            signals.findings,
            reasons,
        )

    def _eligible_tiers(
        self, request: ChatRequest, cond: Conditions, reasons: list[str]
    ) -> list[TierConfig]:
        tiers = list(self._tiers)
        names = [t.name for t in tiers]
        if cond.api_key is not None and cond.api_key.tiers is not None:
            tiers = [t for t in tiers if key_allows_tier(cond.api_key, t.name)]
            allowed_list = ", ".join(cond.api_key.tiers)
            reasons.append(f"api key '{cond.api_key.name}' may use: {allowed_list}")
        h = request.hints
        if h.tier_floor in names:
            tiers = [t for t in tiers if names.index(t.name) >= names.index(h.tier_floor)]
            reasons.append(f"tier floor {h.tier_floor}")
        if h.tier_ceiling in names:
            tiers = [t for t in tiers if names.index(t.name) <= names.index(h.tier_ceiling)]
            reasons.append(f"tier ceiling {h.tier_ceiling}")
        if request.model not in ("auto", "", None):
            if request.model in names:
                tiers = [t for t in tiers if t.name == request.model]
                reasons.append(f"pinned to tier {request.model}")
            elif request.model in self._backends:
                tiers = [
                    TierConfig(name=t.name, backends=[request.model])
                    for t in tiers
                    if request.model in t.backends
                ]
                reasons.append(f"pinned to backend {request.model}")
            else:
                raise NoEligibleBackend(
                    f"model {request.model!r} is not 'auto', a tier ({', '.join(names)}) or a "
                    f"backend ({', '.join(self._backends)})",
                    request_id=request.request_id,
                )
        return tiers

    def _pinned_paid(self, request: ChatRequest, cond: Conditions) -> bool:
        if request.model in ("auto", "", None):
            return False
        backends = [b for t in self._tiers if t.name == request.model for b in t.backends]
        if request.model in self._backends:
            backends = [request.model]
        return any(self._is_paid(b, cond) for b in backends)

    def _refuse_pinned(self, request: ChatRequest, cond: Conditions) -> None:
        """402 for a request that pins a paid tier or backend the budget excludes."""
        why = cond.budget_reason if cond.local_only else ""
        if not why and cond.over_budget:
            pinned = {request.model} | {
                b for t in self._tiers if t.name == request.model for b in t.backends
            }
            why = next((w for b, w in cond.over_budget.items() if b in pinned), "")
        if why:
            raise BudgetExceeded(
                f"{why}; the request pins '{request.model}', which costs money",
                request_id=request.request_id,
            )

    def _is_paid(self, name: str, cond: Conditions) -> bool:
        if cond.paid is not None and name in cond.paid:
            return cond.paid[name]
        return self._backends[name].where is Boundary.EXTERNAL

    # -- objective --------------------------------------------------------------------------
    def _order(
        self,
        tiers: list[TierConfig],
        request: ChatRequest,
        signals: Signals,
        reasons: list[str],
        relief: float = 0.0,
    ) -> list[TierConfig]:
        if not tiers:
            return []
        h = request.hints
        q = h.quality if h.quality is not None else self.settings.routing.quality
        if h.cost_sensitivity == "high" or h.optimize == "cost":
            q = max(q - 0.15, 0.0)
        elif h.cost_sensitivity == "low":
            q = min(q + 0.1, 1.0)
        q = max(q - relief, 0.0)  # a dirty grid (policy/energy.py)
        c = signals.complexity
        if h.urgency == "high" or h.optimize == "latency":
            reasons.append("urgent: the lowest-latency eligible tier first")
            return tiers
        if h.optimize == "quality":
            reasons.append("optimising for quality: the strongest eligible tier first")
            return list(reversed(tiers))
        chosen = next((t for t in tiers if c <= self._strength[t.name] + (0.5 - q)), tiers[-1])
        s = self._strength[chosen.name]
        if c <= s + (0.5 - q):
            reasons.append(
                f"complexity {c:.2f} within tier {chosen.name}'s reach "
                f"({s + 0.5 - q:.2f} at quality {q:.2f})"
            )
        else:
            reasons.append(
                f"complexity {c:.2f} above every eligible tier's reach: the strongest one"
            )
        i = tiers.index(chosen)
        if i > 0:
            reasons.append(f"escalated past {', '.join(t.name for t in tiers[:i])}")
        return [chosen, *tiers[i + 1 :], *reversed(tiers[:i])]

    def _usable(
        self,
        tiers: list[TierConfig],
        ceiling: Boundary,
        signals: Signals,
        cond: Conditions,
        reasons: list[str],
    ) -> dict[str, list[Candidate]]:
        """Each tier's backends that pass the constraints (warm first); say why others don't."""
        out: dict[str, list[Candidate]] = {}
        dropped: dict[str, list[str]] = {}
        for tier in tiers:
            names = list(tier.backends)
            if cond.warm is not None and self.settings.routing.prefer_warm:
                names.sort(key=lambda n: not cond.warm.get(n, False))  # type: ignore[union-attr]
            out[tier.name] = []
            for name in names:
                b = self._backends[name]
                why = self._excluded(b, ceiling, signals, cond)
                if why:
                    dropped.setdefault(why, []).append(name)
                else:
                    out[tier.name].append(Candidate(backend=name, tier=tier.name, boundary=b.where))
        for why, names in dropped.items():
            reasons.append(f"excluded {', '.join(names)}: {why}")
        return out

    def _by_fit(
        self,
        candidates: list[Candidate],
        request: ChatRequest,
        signals: Signals,
        reasons: list[str],
    ) -> list[Candidate]:
        """The tier's candidates, the best suited to the request's needs first (stable)."""
        if len(candidates) < 2:
            return candidates
        if signals.needs is None:
            signals.needs = task_needs(request, signals.task, self._declared)
        needs = signals.needs
        fit = {
            c.backend: [k for k in needs if k in self._backends[c.backend].strengths()]
            for c in candidates
        }
        ordered = sorted(candidates, key=lambda c: -len(fit[c.backend]))
        first = ordered[0].backend
        if first != candidates[0].backend:
            reasons.append(f"{', '.join(fit[first])} request: {first} preferred")
        return ordered

    def _excluded(
        self, b: BackendConfig, ceiling: Boundary, signals: Signals, cond: Conditions
    ) -> str:
        if b.where > ceiling:
            return f"boundary {b.where.label} is beyond {ceiling.label}"
        if cond.local_only and self._is_paid(b.name, cond):
            why = cond.budget_reason or "local tiers only"
            return why if why.startswith("budget") else f"budget: {why}"
        if cond.over_budget and b.name in cond.over_budget:
            return cond.over_budget[b.name]
        window = b.prompt_window()
        if window is not None and signals.tokens > window:
            return f"~{signals.tokens} prompt tokens exceed its context of {window}"
        if cond.healthy is not None and not cond.healthy.get(b.name, True):
            return "unhealthy"
        return ""


def _plan(
    request: ChatRequest,
    signals: Signals,
    candidates: list[Candidate],
    reasons: list[str],
    privacy: Privacy,
) -> Plan:
    return Plan(
        candidates=candidates,
        reasons=reasons,
        privacy=privacy,
        complexity=signals.complexity,
        findings=signals.findings,
        task=dict(signals.task),
        request_id=request.request_id,
    )
