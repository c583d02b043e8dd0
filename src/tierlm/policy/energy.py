"""What the energy state does to one plan (the rules are stated on
:class:`~tierlm.config.settings.EnergyConfig`; the state comes from
:mod:`tierlm.signals.energy`, already cached).

- unknown state (not read yet, stale, failing, reporting nothing): no rule applies, and the
  reason says why;
- an urgent request (``urgency: high``): no rule applies (privacy still does, elsewhere);
- low battery, not charging: only backends within the energy budget, unless none is (energy
  never refuses a request on its own);
- dirty grid: the quality bar is lowered, as for ``cost_sensitivity: high``;
- solar surplus: the carbon rule is lifted, and local candidates go before external ones.

A backend's energy per token is its configured ``joules_per_token``, else the value measured
for it (:mod:`tierlm.signals.rapl`), else the default for its boundary.

Every effect is a reason of the plan and an entry of its ``energy`` object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tierlm.types import Boundary, Candidate, ChatRequest

if TYPE_CHECKING:
    from tierlm.config.settings import BackendConfig, EnergyConfig
    from tierlm.signals.energy import EnergyState


@dataclass(slots=True)
class EnergyEffects:
    """The rules that apply to one request under one energy state."""

    state: EnergyState
    effects: list[str] = field(default_factory=list)
    max_joules: float | None = None  # battery: the energy budget per token
    quality_drop: float = 0.0  # dirty grid
    local_first: bool = False  # solar surplus
    measured: Mapping[str, float] = field(default_factory=dict)  # backend -> J/token (RAPL)

    def to_dict(self) -> dict[str, Any]:
        measured = {k: round(v, 4) for k, v in self.measured.items()}
        return {**self.state.to_dict(), "effects": list(self.effects), "measured": measured}

    def joules_per_token(self, backend: BackendConfig) -> float | None:
        """Configured, else measured, else the boundary's default (``None``: unknown)."""
        if backend.joules_per_token is None and backend.name in self.measured:
            return self.measured[backend.name]
        return backend.energy_per_token()


def effects(
    cfg: EnergyConfig,
    state: EnergyState,
    request: ChatRequest,
    measured: Mapping[str, float] | None = None,
) -> EnergyEffects:
    out = EnergyEffects(state=state, measured=measured or {})
    if not state.known:
        why = state.detail or state.status
        out.effects.append(f"energy state unknown ({state.source}: {why}): no energy rule")
        return out
    if request.hints.urgency == "high":
        out.effects.append("urgent: energy rules not applied")
        return out
    b = state.battery
    low = cfg.battery_below is not None and b is not None and b < cfg.battery_below
    if low and state.charging is not True:
        out.max_joules = cfg.battery_max_joules_per_token
        out.effects.append(
            f"battery {b:.0%} below {cfg.battery_below:.0%} and not charging: "
            f"only backends within {out.max_joules:g} J/token"
        )
    w = state.solar_surplus_w
    c = state.carbon_g_per_kwh
    if cfg.solar_surplus_above_w is not None and w is not None and w >= cfg.solar_surplus_above_w:
        out.local_first = True
        out.effects.append(f"solar surplus {w:g} W: local tiers before external ones")
    elif cfg.carbon_above is not None and c is not None and c > cfg.carbon_above:
        out.quality_drop = cfg.carbon_quality_drop
        out.effects.append(
            f"grid carbon {c:g} g/kWh above {cfg.carbon_above:g}: quality bar lowered by "
            f"{out.quality_drop:g} (lighter tiers first)"
        )
    return out


def within_budget(
    usable: dict[str, list[Candidate]],
    backends: dict[str, BackendConfig],
    eff: EnergyEffects,
) -> dict[str, list[Candidate]]:
    """``usable`` without the backends over the battery's energy budget (unchanged, with an
    effect saying so, when that would leave nothing)."""
    limit = eff.max_joules
    if limit is None:
        return usable

    def fits(c: Candidate) -> bool:
        j = eff.joules_per_token(backends[c.backend])
        return j is not None and j <= limit

    kept = {t: [c for c in cands if fits(c)] for t, cands in usable.items()}
    over = [c.backend for cands in usable.values() for c in cands if not fits(c)]
    if not any(kept.values()):
        eff.effects.append(f"no backend within {limit:g} J/token: not restricted")
        return usable
    if over:
        eff.effects.append(f"excluded {', '.join(over)}: over the energy budget")
    return kept


def local_first(candidates: list[Candidate]) -> list[Candidate]:
    """Local candidates before external ones, each group in plan order."""
    return sorted(candidates, key=lambda c: c.boundary is Boundary.EXTERNAL)
