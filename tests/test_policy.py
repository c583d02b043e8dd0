"""The policy: constraints first (privacy, keys, pins, budget, context, health), then the
cheapest tier that clears the quality bar, then ordered fallbacks."""

from __future__ import annotations

import pytest

from tierlm.config import load_settings
from tierlm.config.settings import ApiKeyConfig, Settings
from tierlm.errors import BudgetExceeded, NoEligibleBackend
from tierlm.policy import Conditions, Policy, Signals
from tierlm.types import Boundary, ChatRequest, Finding, Privacy

ENV = {
    "TIERLM_SITE_URL": "http://127.0.0.1:9/v1",
    "TIERLM_SITE_MODEL": "llama-70b",
    "OPENAI_API_KEY": "k",
    "ANTHROPIC_API_KEY": "k",
}


@pytest.fixture
def full() -> Settings:
    return load_settings(preset="full-stack", env=ENV)


def plan(
    settings: Settings,
    c: float = 0.1,
    *,
    findings: list[Finding] | None = None,
    tokens: int = 10,
    cond: Conditions | None = None,
    **req: object,
):
    request = ChatRequest.from_prompt("x", **req)  # type: ignore[arg-type]
    sig = Signals(complexity=c, findings=findings or [], tokens=tokens)
    return Policy(settings).plan(request, sig, cond or Conditions())


def tiers(p) -> list[str]:  # type: ignore[no-untyped-def]
    return [c.tier for c in p.candidates]


def test_cheapest_tier_that_clears_the_bar_then_fallbacks(full: Settings) -> None:
    assert tiers(plan(full, 0.2)) == ["tiny", "site", "cloud", "cloud"]
    p = plan(full, 0.5)
    assert tiers(p) == ["site", "cloud", "cloud", "tiny"]
    assert any("escalated past tiny" in r for r in p.reasons)
    assert tiers(plan(full, 0.9))[0] == "cloud"
    assert [c.backend for c in plan(full, 0.9).candidates[:2]] == ["openai", "anthropic"]


def test_quality_knob_moves_the_thresholds(full: Settings) -> None:
    # c <= s + (0.5 - q): a higher bar escalates sooner, a lower one keeps more local
    assert tiers(plan(full, 0.3, hints={"quality": 0.8}))[0] == "site"
    assert tiers(plan(full, 0.6, hints={"quality": 0.2}))[0] == "tiny"
    assert tiers(plan(full, 0.6, hints={"cost_sensitivity": "high"}))[0] == "site"


def test_sensitive_content_never_has_an_external_candidate(full: Settings) -> None:
    for c in (0.0, 0.5, 1.0):
        p = plan(full, c, findings=[Finding("payment_card", 0, 19)])
        assert p.privacy is Privacy.PRIVATE and p.sensitive
        assert all(x.boundary <= Boundary.SITE for x in p.candidates)
        assert any("payment_card" in r for r in p.reasons)
        assert any("beyond site" in r for r in p.reasons)


def test_privacy_levels_only_go_up(full: Settings) -> None:
    p = plan(full, 0.9, hints={"privacy": "private"})
    assert {x.boundary for x in p.candidates} <= {Boundary.PROCESS, Boundary.SITE}
    key = ApiKeyConfig(name="plant", hash="0" * 64, privacy=Privacy.PRIVATE)
    p = plan(full, 0.9, hints={"privacy": "public"}, cond=Conditions(api_key=key))
    assert p.privacy is Privacy.PRIVATE
    assert all(x.boundary <= Boundary.SITE for x in p.candidates)


def test_api_key_tiers_and_boundary_ceiling(full: Settings) -> None:
    key = ApiKeyConfig(name="edge", hash="0" * 64, tiers=["tiny", "site"])
    assert set(tiers(plan(full, 0.9, cond=Conditions(api_key=key)))) == {"tiny", "site"}
    key = ApiKeyConfig(name="host", hash="0" * 64, max_privacy_boundary="process")
    assert tiers(plan(full, 0.9, cond=Conditions(api_key=key))) == ["tiny"]


def test_pins_and_tier_floor_ceiling(full: Settings) -> None:
    assert tiers(plan(full, 0.0, model="cloud")) == ["cloud", "cloud"]
    p = plan(full, 0.0, model="anthropic")
    assert [c.backend for c in p.candidates] == ["anthropic"]
    assert tiers(plan(full, 0.0, hints={"tier_floor": "site"}))[0] == "site"
    assert set(tiers(plan(full, 1.0, hints={"tier_ceiling": "site"}))) == {"tiny", "site"}
    with pytest.raises(NoEligibleBackend, match="not 'auto', a tier"):
        plan(full, model="gpt-7")


def test_pinning_an_external_tier_under_private_is_refused(full: Settings) -> None:
    with pytest.raises(NoEligibleBackend, match="beyond site"):
        plan(full, model="cloud", findings=[Finding("secret:openai_key", 0, 10)])


def test_budget_local_only_degrades_and_pins_get_a_budget_error(full: Settings) -> None:
    cond = Conditions(local_only=True, budget_reason="$1 of $100 left")
    p = plan(full, 0.95, cond=cond)
    assert tiers(p) == ["site", "tiny"], "degrades to local tiers, never fails"
    assert any("budget" in r for r in p.reasons)
    with pytest.raises(BudgetExceeded, match=r"\$1 of \$100 left"):
        plan(
            full,
            0.1,
            model="cloud",
            cond=Conditions(local_only=True, budget_reason="$1 of $100 left"),
        )


def test_context_window_and_health(full: Settings) -> None:
    p = plan(full, 0.0, tokens=6000)  # the tiny model has a 4096-token context
    assert tiers(p)[0] != "tiny" and "tiny" not in tiers(p)
    cond = Conditions(healthy={"site": False})
    assert "site" not in tiers(plan(full, 0.5, cond=cond))


def test_urgency_and_optimisation_goals(full: Settings) -> None:
    assert tiers(plan(full, 0.9, hints={"urgency": "high"}))[0] == "tiny"
    assert tiers(plan(full, 0.0, hints={"optimize": "quality"}))[0] == "cloud"


def test_warm_backends_first_within_a_tier() -> None:
    s = load_settings(
        env={},
        overrides={
            "backends": [
                {"name": "a", "kind": "llama_cpp", "model": "a"},
                {"name": "b", "kind": "llama_cpp", "model": "b"},
            ],
            "tiers": [{"name": "tiny", "backends": ["a", "b"]}],
        },
    )
    p = plan(s, cond=Conditions(warm={"a": False, "b": True}))
    assert [c.backend for c in p.candidates] == ["b", "a"]


def test_air_gapped_plans_never_leave_the_site() -> None:
    s = load_settings(preset="air-gapped", env=ENV)
    for c in (0.0, 0.5, 1.0):
        assert all(x.boundary <= Boundary.SITE for x in plan(s, c).candidates)


def test_plan_json_has_the_documented_fields(full: Settings) -> None:
    d = plan(full, 0.4, findings=[Finding("email", 3, 20)]).to_dict()
    for k in (
        "tier",
        "backend",
        "boundary",
        "complexity",
        "privacy",
        "sensitive",
        "findings",
        "candidates",
        "reasons",
    ):
        assert k in d
    assert d["findings"] == [{"kind": "email", "message": 0, "start": 3, "end": 20}]
    assert all(set(c) == {"backend", "tier", "boundary"} for c in d["candidates"])


def test_enhanced_requests_may_leave_only_redacted(full: Settings) -> None:
    p = plan(full, 0.9, hints={"privacy": "enhanced"}, findings=[Finding("email", 0, 9)])
    assert p.privacy is Privacy.ENHANCED
    assert p.candidates[0].boundary is Boundary.EXTERNAL
    assert any("redacted before leaving the site" in r for r in p.reasons)
