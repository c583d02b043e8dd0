"""The Router end to end with its ledger: every request recorded, budgets that degrade to
local tiers, and `enhanced` requests redacted before they leave the site."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from conftest import STORIES
from fakes.faulty_upstream import FaultyUpstream, Scenario
from tierlm import Router
from tierlm.config import load_settings
from tierlm.errors import BudgetExceeded
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
            "backends": [
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
            "tiers": [
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
    assert tiers[0] == "cloud"
    assert tiers[-1] == "tiny", tiers  # degraded, never failed
    assert "tiny" in tiers and tiers.index("tiny") > 0
    assert spent.remaining_usd is not None and spent.remaining_usd >= 0
    assert upstream.count("ok") < 12


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
