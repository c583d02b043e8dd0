"""When a deferred line may run: the ``batch.window`` conditions, checked against the clock,
the cached energy state, the budget and live traffic.

:func:`blockers` names every condition that holds a line back now (an empty list: it may
run). Each is a short reason (``"hour 14 UTC is not off-peak"``), so ``GET /v1/batches/{id}``
and the scheduler's log can say why a batch waits. In the last ``run_anyway_seconds`` of a
batch's window only live traffic on its local model holds a line back (that wait is short;
a live request is never made to wait for deferred work).

An energy condition is met only by a known reading: with no ``energy`` section, or a state
that is stale or failing, it holds the line back until the window's end.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tierlm.batch.config import WindowConfig
    from tierlm.signals.energy import EnergyState


@dataclass(frozen=True, slots=True)
class Now:
    """What the conditions are checked against, read once per scheduling round."""

    ts: float  # wall-clock seconds (the scheduler's clock)
    energy: EnergyState | None  # None: no energy section
    budget_share: float | None  # least share left of the money budgets; None: none set
    live: int  # live requests in flight in this gateway


def blockers(cfg: WindowConfig, now: Now, *, local: bool, forced: bool = False) -> list[str]:
    """Why a line may not start now (empty: it may). ``local``: it would run on a model of
    this site (process, host or site boundary); ``forced``: its window is ending."""
    why: list[str] = []
    if local and cfg.local_idle and now.live > 0:
        why.append(f"{now.live} live request(s) in flight: local capacity is not idle")
    if forced:
        return why
    hour = datetime.fromtimestamp(now.ts, UTC).hour
    if cfg.off_peak_hours is not None and hour not in cfg.off_peak_hours:
        why.append(f"hour {hour} UTC is not off-peak")
    why += _energy(cfg, now.energy)
    share, least = now.budget_share, cfg.min_budget_share
    if least is not None and share is not None and share < least:
        why.append(f"budget: {share:.0%} left, below {least:.0%}")
    return why


def _energy(cfg: WindowConfig, state: EnergyState | None) -> list[str]:
    wanted = (
        cfg.max_carbon_g_per_kwh is not None
        or cfg.min_battery is not None
        or cfg.min_solar_surplus_w is not None
    )
    if not wanted:
        return []
    if state is None or not state.known:
        status = "no energy section" if state is None else f"energy state {state.status}"
        return [f"{status}: the energy conditions cannot be checked"]
    why: list[str] = []
    carbon = state.carbon_g_per_kwh
    if cfg.max_carbon_g_per_kwh is not None and (
        carbon is None or carbon > cfg.max_carbon_g_per_kwh
    ):
        why.append(f"carbon {_num(carbon)} g/kWh, above {cfg.max_carbon_g_per_kwh:g}")
    battery = state.battery
    if (
        cfg.min_battery is not None
        and not state.charging
        and (battery is None or battery < cfg.min_battery)
    ):
        shown = "unknown" if battery is None else f"{battery:.0%}"
        why.append(f"battery {shown} and not charging, below {cfg.min_battery:.0%}")
    solar = state.solar_surplus_w
    if cfg.min_solar_surplus_w is not None and (solar is None or solar < cfg.min_solar_surplus_w):
        why.append(f"solar surplus {_num(solar)} W, below {cfg.min_solar_surplus_w:g}")
    return why


def _num(value: float | None) -> str:
    return "unknown" if value is None else f"{value:g}"
