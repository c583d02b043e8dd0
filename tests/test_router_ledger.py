"""The Router end to end with its ledger: every request recorded, budgets that degrade to
local tiers, and `enhanced` requests redacted before they leave the site."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from conftest import STORIES
from fakes.faulty_upstream import FaultyUpstream, Scenario
from tierlm import Router
from tierlm.config import load_settings
from tierlm.errors import BudgetExceeded
from tierlm.ledger.budgets import to_nusd
from tierlm.types import ChatRequest

HARD = (
    "Design a predictive maintenance program for 40 pumps with staffing, spare parts, "
    "a training plan and a phased rollout across three plants, with risks and costs."
)


def _router(tmp_path: Path, cloud_url: str, **extra: Any) -> Router:
    settings = load_settings(
        env={},
        overrides={
            "data_dir": str(tmp_path),
            "backends": extra.pop("backends", None)
            or [
                {"name": "tiny", "kind": "llama_cpp", "model": str(STORIES), "n_ctx": 512},
                {
                    "name": "cloud",
                    "kind": "openai",
                    "provider": "openai",
                    "url": cloud_url,
                    "model": "gpt-test",
                    "api_key": "sk-test",
                    "boundary": "external",
                    # $100 per million tokens each way: a 60-token answer costs about a cent
                    "price": {"input": 100.0, "output": 100.0},
                },
            ],
            "tiers": extra.pop("tiers", None)
            or [
                {"name": "tiny", "backends": ["tiny"], "strength": 0.35},
                {"name": "cloud", "backends": ["cloud"], "strength": 1.0},
            ],
            **extra,
        },
    )
    return Router(settings)


def _rows(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        return db.execute(sql).fetchall()


def test_every_request_is_recorded_with_its_attempts(
    tmp_path: Path, upstream: FaultyUpstream
) -> None:
    url = upstream.add("ok", Scenario(kind="healthy", tokens=20))
    with _router(tmp_path, url) as router:
        local = router.chat("Turn on pump 3", max_tokens=8)
        remote = router.chat(HARD, max_tokens=30)
        streamed = list(router.stream(HARD, max_tokens=30))
        router.accounting.ledger.flush()
    assert local.tier == "tiny" and remote.tier == "cloud"
    assert streamed[-1].usage is not None
    rows = _rows(tmp_path, "SELECT id, tier, backend, outcome, cost_usd FROM requests")
    assert len(rows) == 3 and len({r[0] for r in rows}) == 3  # one record per request
    assert sorted(r[1] for r in rows) == ["cloud", "cloud", "tiny"]
    assert all(r[3] == "ok" for r in rows)
    assert sum(r[4] > 0 for r in rows) == 2, "both cloud answers cost money, local none"
    audit = _rows(tmp_path, "SELECT backend, digest FROM audit")
    assert len(audit) == 2 and all(b == "cloud" and len(d) == 64 for b, d in audit)
    # escalated, as the plan says it ("escalated past tiny"): a stronger tier than the
    # cheapest eligible one answered; no attempt failed, so no fallback
    flags = _rows(tmp_path, "SELECT tier, escalated, fallback, reasons FROM requests")
    for tier, escalated, fallback, reasons in flags:
        assert escalated == (tier == "cloud") and not fallback
        assert ("escalated past tiny" in reasons) == (tier == "cloud")


def test_budget_runs_out_then_requests_degrade_to_local(
    tmp_path: Path, upstream: FaultyUpstream
) -> None:
    url = upstream.add("ok", Scenario(kind="healthy", tokens=60))
    budget = {
        "limits": [{"scope": "global", "period": "month", "usd": 0.05}],
        "per_request_share": 1.0,
    }
    with _router(tmp_path, url, budgets=budget) as router:
        tiers = [router.chat(HARD, max_tokens=60).tier for _ in range(12)]
        with pytest.raises(BudgetExceeded):
            router.chat(HARD, model="cloud", max_tokens=60)
        spent = router.accounting.ledger.budget_state(key=None, tier=None)
        ledger = router.accounting.ledger
        ledger.flush()
        report = ledger.report()
    assert tiers[0] == "cloud"
    assert tiers[-1] == "tiny", tiers  # degraded, never failed
    assert "tiny" in tiers and tiers.index("tiny") > 0
    assert spent.remaining_usd is not None and spent.remaining_usd >= 0
    assert upstream.count("ok") < 12
    # the plans of the degraded requests say why, in readable money
    (last,) = _rows(
        tmp_path, "SELECT reasons FROM requests WHERE tier = 'tiny' ORDER BY ts DESC LIMIT 1"
    )
    why = " ".join(json.loads(last[0]))
    assert "excluded cloud: budget global/month has $" in why, why
    assert "e-0" not in why and "cloud's reach" not in why
    # and the report recommends about the budget, not only about errors
    assert report.budget_kept_local >= 1
    assert any(
        "left out a paid tier because the budget could not cover" in r
        and "budget global/month has $" in r
        for r in report.recommendations
    ), (
        report.recommendations,
        report.budgets,
    )
    assert report.budgets and report.budgets[0]["label"] == "global/month"


def test_a_call_the_budget_cannot_cover_is_explained_in_the_plan(
    tmp_path: Path, upstream: FaultyUpstream
) -> None:
    """Not yet local-only, but this call's estimate is over the per-request share: the plan
    excludes the cloud and says why, and its reasons match the tier that answers."""
    url = upstream.add("ok", Scenario(kind="healthy", tokens=5))
    budget = {"limits": [{"scope": "global", "period": "month", "usd": 1.0}]}
    with _router(tmp_path, url, budgets=budget) as router:
        cheap = router.chat(HARD, max_tokens=50)  # ~$0.01: under 5% of $1.00
        dear = router.chat(HARD, max_tokens=1000)  # ~$0.10: over it
        router.accounting.ledger.flush()
        with pytest.raises(BudgetExceeded, match="per_request_share"):
            router.chat(HARD, model="cloud", max_tokens=1000)
    assert (cheap.tier, dear.tier) == ("cloud", "tiny")
    (row,) = _rows(tmp_path, "SELECT reasons FROM requests WHERE tier = 'tiny'")
    why = json.loads(row[0])
    assert any(
        r.startswith("excluded cloud: budget global/month has $")
        and "of $1.00 left; this call (~$0.1" in r
        and "per_request_share" in r
        for r in why
    ), why
    assert not any("cloud's reach" in r for r in why), why
    assert any("tier tiny" in r or "strongest one" in r for r in why), why


def test_a_failed_attempt_is_not_billed(tmp_path: Path, upstream: FaultyUpstream) -> None:
    """Against the real accounting and ledger: the budget is charged exactly the answer that
    was delivered; the attempt that failed (after the upstream had generated tokens) is not."""
    broken = upstream.add("broken", Scenario(kind="cut", after=30, tokens=60))
    ok = upstream.add("ok", Scenario(kind="healthy", tokens=20))
    cloud = {
        "kind": "openai",
        "provider": "openai",
        "model": "gpt-test",
        "api_key": "sk-test",
        "boundary": "external",
        "price": {"input": 100.0, "output": 100.0},
    }
    budget = {"limits": [{"scope": "global", "period": "month", "usd": 100.0}]}
    with _router(
        tmp_path,
        ok,
        budgets=budget,
        backends=[
            {"name": "tiny", "kind": "llama_cpp", "model": str(STORIES), "n_ctx": 512},
            {"name": "cloud1", "url": broken, **cloud},
            {"name": "cloud2", "url": ok, **cloud},
        ],
        tiers=[
            {"name": "tiny", "backends": ["tiny"], "strength": 0.35},
            {"name": "cloud", "backends": ["cloud1", "cloud2"], "strength": 1.0},
        ],
    ) as router:
        resp = router.chat(HARD, max_tokens=60)
        router.accounting.ledger.flush()
        state = router.accounting.ledger.budget_state(key=None, tier=None)
    assert (resp.tier, resp.backend) == ("cloud", "cloud2")
    assert upstream.count("broken") >= 1
    expected = (resp.usage.prompt_tokens + resp.usage.completion_tokens) * 100.0 / 1e6
    (cost,) = _rows(tmp_path, "SELECT cost_usd FROM requests")[0]
    assert cost == pytest.approx(expected)
    ((bucket,),) = [state.buckets]
    assert bucket.reserved_nusd == 0
    assert bucket.spent_nusd == to_nusd(expected)  # the failed attempt added nothing
    attempts = _rows(tmp_path, "SELECT backend, outcome, tokens FROM attempts ORDER BY n")
    assert attempts[0][0] == "cloud1" and attempts[0][1] != "ok" and attempts[0][2] == 0
    assert attempts[-1][:2] == ("cloud2", "ok")


def test_enhanced_requests_reach_the_cloud_only_redacted(
    tmp_path: Path, upstream: FaultyUpstream
) -> None:
    url = upstream.add("ok", Scenario(kind="healthy", tokens=10))
    prompt = HARD + " Bill card 4111 1111 1111 1111 and mail anna.schmidt@rheinwerk.de."
    with _router(tmp_path, url) as router:
        private = router.chat(prompt, max_tokens=8)
        enhanced = router.chat(
            ChatRequest.from_prompt(prompt, max_tokens=8, hints={"privacy": "enhanced"})
        )
    assert private.tier == "tiny"  # public + findings -> private: never external
    assert enhanced.tier == "cloud"
    (body,) = upstream.bodies("ok")
    sent = str(body["messages"])
    assert "4111" not in sent and "anna.schmidt" not in sent
    assert "[PAYMENT_CARD]" in sent and "[EMAIL]" in sent


def test_stored_prompts_are_redacted(tmp_path: Path, upstream: FaultyUpstream) -> None:
    url = upstream.add("ok", Scenario(kind="healthy", tokens=5))
    prompt = "Turn on pump 3 and tell jonas.weber@rheinwerk.de"
    with _router(tmp_path, url, ledger={"store_prompts": True}) as router:
        router.chat(prompt, max_tokens=6)
        list(router.stream("Turn on pump 4", max_tokens=6))
        router.accounting.ledger.flush()
    rows = _rows(tmp_path, "SELECT prompt, completion FROM requests ORDER BY ts")
    assert rows[0][0] == "Turn on pump 3 and tell [EMAIL]"
    assert rows[1][0] == "Turn on pump 4" and rows[1][1]  # the streamed answer is kept too
    for f in tmp_path.glob("ledger.sqlite3*"):  # the database and its WAL
        assert b"jonas.weber" not in f.read_bytes()
