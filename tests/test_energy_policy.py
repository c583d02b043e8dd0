"""The policy under an energy state: a low battery keeps to the energy budget, a dirty grid
lowers the quality bar, a solar surplus puts local tiers first; urgent requests and an
unknown state are left alone, each with a reason; ``route --json`` carries the energy
object."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tierlm.cli.main import app
from tierlm.config import load_settings
from tierlm.config.settings import Settings
from tierlm.policy import Conditions, Policy, Signals
from tierlm.router import Router
from tierlm.signals.energy import EnergyState
from tierlm.types import ChatRequest, Plan, Privacy

ENV = {
    "TIERLM_SITE_URL": "http://127.0.0.1:9/v1",
    "TIERLM_SITE_MODEL": "llama-70b",
    "OPENAI_API_KEY": "k",
    "ANTHROPIC_API_KEY": "k",
}
RULES = {"battery_below": 0.2, "carbon_above": 400, "solar_surplus_above_w": 500}


def stack(**energy: Any) -> Settings:
    return load_settings(
        preset="full-stack", env=ENV, overrides={"energy": {"source": "none", **RULES, **energy}}
    )


def ok(**fields: Any) -> EnergyState:
    return EnergyState(source="test", status="ok", read_at=0.0, age_s=1.0, **fields)


def plan(settings: Settings, state: EnergyState | None, c: float = 0.2, **req: Any) -> Plan:
    request = ChatRequest.from_prompt("x", **req)
    return Policy(settings).plan(request, Signals(complexity=c), Conditions(energy=state))


def tiers(p: Plan) -> list[str]:
    return [c.tier for c in p.candidates]


def test_no_energy_section_no_energy_object() -> None:
    p = plan(load_settings(preset="full-stack", env=ENV), ok(battery=0.05))
    assert p.energy is None and "energy" not in p.to_dict()
    assert tiers(p) == ["tiny", "site", "cloud", "cloud"]


def test_low_battery_keeps_to_the_tiny_tier_with_a_reason() -> None:
    s = stack()
    assert tiers(plan(s, ok(battery=0.5), c=0.6))[0] == "site"  # the baseline
    p = plan(s, ok(battery=0.1, charging=False), c=0.6)
    assert tiers(p) == ["tiny"]
    assert "energy: battery 10% below 20% and not charging: only backends within 1 J/token" in (
        p.reasons
    )
    assert "energy: excluded site, openai, anthropic: over the energy budget" in p.reasons
    e = p.to_dict()["energy"]
    assert (e["status"], e["battery"], e["source"], e["age_s"]) == ("ok", 0.1, "test", 1.0)
    assert e["effects"][0].startswith("battery 10% below 20%")


def test_low_battery_while_charging_or_configured_joules_allow_more() -> None:
    assert tiers(plan(stack(), ok(battery=0.1, charging=True)))[:2] == ["tiny", "site"]
    s = stack(battery_max_joules_per_token=5.0)  # the site server's default 5 J/token fits
    assert tiers(plan(s, ok(battery=0.1), c=0.6)) == ["site", "tiny"]


def test_low_battery_never_leaves_nothing() -> None:
    s = stack(battery_max_joules_per_token=0.0)
    p = plan(s, ok(battery=0.1), c=0.2)
    assert tiers(p) == ["tiny", "site", "cloud", "cloud"]
    assert "energy: no backend within 0 J/token: not restricted" in p.reasons


def test_dirty_grid_lowers_the_quality_bar() -> None:
    s = stack()
    assert tiers(plan(s, ok(carbon_g_per_kwh=200), c=0.5))[0] == "site"
    p = plan(s, ok(carbon_g_per_kwh=650), c=0.5)
    assert tiers(p)[0] == "tiny"  # 0.5 <= 0.35 + (0.5 - 0.35)
    assert (
        "energy: grid carbon 650 g/kWh above 400: quality bar lowered by 0.15 "
        "(lighter tiers first)" in p.reasons
    )
    assert tiers(plan(s, ok(carbon_g_per_kwh=650), c=0.8))[0] == "site"  # still within reach


def test_solar_surplus_prefers_local_tiers_and_lifts_the_carbon_rule() -> None:
    s = stack()
    assert tiers(plan(s, ok(), c=0.95))[0] == "cloud"
    p = plan(s, ok(solar_surplus_w=800, carbon_g_per_kwh=650), c=0.95)
    assert tiers(p) == ["site", "tiny", "cloud", "cloud"]
    assert "energy: solar surplus 800 W: local tiers before external ones" in p.reasons
    assert not any("grid carbon" in r for r in p.reasons)
    assert tiers(plan(s, ok(solar_surplus_w=100), c=0.95))[0] == "cloud"  # below the threshold


def test_urgent_requests_are_not_restricted() -> None:
    hints = {"urgency": "high"}
    p = plan(stack(), ok(battery=0.05, carbon_g_per_kwh=900), c=0.6, hints=hints)
    assert tiers(p) == ["tiny", "site", "cloud", "cloud"]
    assert "energy: urgent: energy rules not applied" in p.reasons


def test_privacy_still_applies_under_energy_rules() -> None:
    p = plan(stack(), ok(solar_surplus_w=900), c=0.95, hints={"privacy": Privacy.PRIVATE})
    assert {c.tier for c in p.candidates} == {"tiny", "site"}


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (None, "energy: energy state unknown (none: no reading supplied): no energy rule"),
        (
            EnergyState(source="file:/x", status="stale", detail="last reading 900 s old"),
            "energy: energy state unknown (file:/x: last reading 900 s old): no energy rule",
        ),
        (
            EnergyState(source="http://h/e", status="failing", detail="HTTP 503 from http://h/e"),
            "energy: energy state unknown (http://h/e: HTTP 503 from http://h/e): no energy rule",
        ),
    ],
)
def test_unknown_state_has_no_effect_and_says_so(state: EnergyState | None, reason: str) -> None:
    p = plan(stack(), state, c=0.6)
    assert tiers(p) == ["site", "cloud", "cloud", "tiny"]
    assert reason in p.reasons


def test_router_plans_on_its_cached_snapshot(tmp_path: Path) -> None:
    f = tmp_path / "energy.json"
    f.write_text(json.dumps({"battery": 0.1}))
    s = stack(source=f"file:{f}", refresh_seconds=3600)
    s.ledger.url = "off"
    with Router(s) as router:
        assert router.energy is not None
        router.energy.first_reading(10)
        f.unlink()  # the request path never reads the source: the cached state still holds
        req = ChatRequest.from_prompt("Prove that there are infinitely many primes in detail.")
        assert tiers(router.plan(req)) == ["tiny"]


def test_route_json_carries_the_energy_object(tmp_path: Path, monkeypatch: Any) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    f = tmp_path / "energy.json"
    f.write_text(json.dumps({"battery": 0.05, "charging": False}))
    args = ["route", "--preset", "full-stack", "--json", "--energy-file", str(f), "hello there"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    d = json.loads(out.output)
    assert d["energy"]["battery"] == 0.05 and d["energy"]["status"] == "ok"
    assert d["energy"]["source"] == f"file:{f}"
    assert [c["tier"] for c in d["candidates"]] == ["tiny"]
    assert any(r.startswith("energy: battery 5% below 20%") for r in d["reasons"])
