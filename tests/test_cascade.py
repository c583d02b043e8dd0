"""The cascade end to end: the real SmolLM2 tiny tier answers first, the judge scores it, and a
scripted strong tier (the fake OpenAI-wire upstream) gets what fails; privacy and budget
limits hold; both stream modes; the ledger and the gateway show the decisions."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import SMOLLM2
from fakes.faulty_upstream import FaultyUpstream, Scenario, expected_text
from server_util import serve_gateway
from tierlm import Router
from tierlm.config import load_settings
from tierlm.config.settings import Settings
from tierlm.types import ChatRequest

QUESTION = "What is the capital of France?"
STRONG = expected_text(20)
pytestmark = pytest.mark.slow  # the real tiny model answers
REFUSAL = "I'm sorry, but I cannot help with that request because it is not allowed for me."


def _settings(
    tmp_path: Path,
    cloud_url: str,
    cascade: dict[str, Any] | None,
    *,
    tiny: dict[str, Any] | None = None,
    **extra: Any,
) -> Settings:
    tiny = tiny or {
        "name": "tiny",
        "kind": "llama_cpp",
        "model": str(SMOLLM2),
        "n_ctx": 1024,
        "timeouts": {"first_token": 300.0, "total": 600.0},  # a busy machine must not fail over
    }
    return load_settings(
        env={},
        overrides={
            "data_dir": str(tmp_path),
            "routing": {"complexity_method": "length"},
            "backends": [
                tiny,
                {
                    "name": "cloud",
                    "kind": "openai",
                    "provider": "openai",
                    "url": cloud_url,
                    "model": "gpt-test",
                    "api_key": "sk-test",
                    "boundary": "external",
                    "price": {"input": 100.0, "output": 100.0},
                },
            ],
            "tiers": [
                {"name": "tiny", "backends": [tiny["name"]], "strength": 0.35, "cascade": cascade},
                {"name": "cloud", "backends": ["cloud"], "strength": 1.0},
            ],
            **extra,
        },
    )


def _rows(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        return db.execute(sql).fetchall()


ATTEMPTS = "SELECT backend, outcome, judge_score, judge_decision FROM attempts ORDER BY n"


def test_a_good_enough_answer_stays_on_tiny(tmp_path: Path, upstream: FaultyUpstream) -> None:
    url = upstream.add("cloud", Scenario(tokens=20))
    with Router(_settings(tmp_path, url, {"threshold": 0.0})) as router:
        resp = router.chat(QUESTION, max_tokens=24, temperature=0.0)
        router.accounting.ledger.flush()
    assert resp.tier == "tiny" and resp.text
    assert resp.cascade is not None and resp.cascade[0]["decision"] == "accept"
    assert 0.0 <= resp.cascade[0]["score"] <= 1.0
    assert upstream.count("cloud") == 0
    ((backend, outcome, score, decision),) = _rows(tmp_path, ATTEMPTS)
    assert (backend, outcome, decision) == ("tiny", "ok", "accept") and score is not None


def test_an_answer_below_the_bar_escalates(tmp_path: Path, upstream: FaultyUpstream) -> None:
    url = upstream.add("cloud", Scenario(tokens=20))
    with Router(_settings(tmp_path, url, {"threshold": 1.0})) as router:
        resp = router.chat(QUESTION, max_tokens=24, temperature=0.0)
        router.accounting.ledger.flush()
        (stats,) = router.accounting.ledger.report(timedelta(days=1)).cascade
    assert (stats.tier, stats.judged, stats.escalated, stats.acceptance_rate) == ("tiny", 1, 1, 0)
    assert stats.escalation_cost_usd > 0 and stats.escalated_wait_ms is not None
    assert resp.tier == "cloud" and resp.text == STRONG
    assert [d["decision"] for d in resp.cascade or []] == ["escalate"]
    assert upstream.count("cloud") == 1
    rows = _rows(tmp_path, ATTEMPTS)
    assert [(r[0], r[1], r[3]) for r in rows] == [("tiny", "ok", "escalate"), ("cloud", "ok", None)]
    assert rows[0][2] < 1.0
    ((escalated, cost),) = _rows(tmp_path, "SELECT escalated, cost_usd FROM requests")
    assert escalated == 1 and cost > 0


def test_a_private_request_never_escalates_to_an_external_tier(
    tmp_path: Path, upstream: FaultyUpstream
) -> None:
    url = upstream.add("cloud", Scenario(tokens=20))
    with Router(_settings(tmp_path, url, {"threshold": 1.0})) as router:
        req = ChatRequest.from_prompt(QUESTION, max_tokens=24, hints={"privacy": "private"})
        resp = router.chat(req)
        router.accounting.ledger.flush()
    assert resp.tier == "tiny" and resp.text
    assert [d["decision"] for d in resp.cascade or []] == ["keep"]
    assert upstream.count("cloud") == 0
    assert _rows(tmp_path, "SELECT COUNT(*) FROM audit") == [(0,)]


def test_escalation_within_the_budget_only(tmp_path: Path, upstream: FaultyUpstream) -> None:
    url = upstream.add("cloud", Scenario(tokens=20))
    budget = {
        "limits": [{"scope": "global", "period": "month", "usd": 0.000001}],
        "local_only_below": 0.0,
        "per_request_share": 1.0,
    }
    with Router(_settings(tmp_path, url, {"threshold": 1.0}, budgets=budget)) as router:
        resp = router.chat(QUESTION, max_tokens=24, temperature=0.0)
        router.accounting.ledger.flush()
    assert resp.tier == "tiny" and resp.text
    (trail,) = resp.cascade or []
    assert trail["decision"] == "keep"
    assert upstream.count("cloud") == 0
    # the plan already leaves out the call the budget cannot cover, and says so
    ((reasons,),) = _rows(tmp_path, "SELECT reasons FROM requests")
    assert "excluded cloud: budget global/month has $" in reasons, reasons
    assert [(r[0], r[3]) for r in _rows(tmp_path, ATTEMPTS)] == [("tiny", "keep")]


def test_buffer_mode_streams_the_accepted_or_the_escalated_answer(
    tmp_path: Path, upstream: FaultyUpstream
) -> None:
    url = upstream.add("cloud", Scenario(tokens=20))
    with Router(_settings(tmp_path, url, {"threshold": 0.0, "mode": "buffer"})) as router:
        kept = list(router.stream(QUESTION, max_tokens=24, temperature=0.0))
        hint = {"cascade": {"threshold": 1.0}}
        escalated = list(router.stream(QUESTION, max_tokens=24, temperature=0.0, hints=hint))
        router.accounting.ledger.flush()
    assert "".join(e.text for e in kept) and kept[-1].finish_reason in ("stop", "length")
    assert "".join(e.text for e in escalated) == STRONG
    assert len([e for e in escalated if e.text]) > 1  # the stronger answer streams through
    assert upstream.count("cloud") == 1
    tiers = _rows(tmp_path, "SELECT tier, escalated, stream FROM requests ORDER BY ts")
    assert tiers == [("tiny", 0, 1), ("cloud", 1, 1)]


def test_stream_mode_passes_a_clean_answer_through_and_judges_it_at_the_end(
    tmp_path: Path, upstream: FaultyUpstream
) -> None:
    url = upstream.add("cloud", Scenario(tokens=20))
    cascade = {"threshold": 1.0, "mode": "stream", "check_chars": 8}
    with Router(_settings(tmp_path, url, cascade)) as router:
        events = list(router.stream(QUESTION, max_tokens=24, temperature=0.0))
        router.accounting.ledger.flush()
    assert "".join(e.text for e in events) and events[-1].finish_reason is not None
    rows = _rows(tmp_path, ATTEMPTS)
    assert upstream.count("cloud") == 0, rows  # what was sent cannot be taken back
    ((backend, _, score, decision),) = rows
    assert backend == "tiny" and decision == "late_fail" and score is not None


def test_stream_mode_drops_a_refusal_before_any_of_it_is_sent(
    tmp_path: Path, upstream: FaultyUpstream
) -> None:
    cloud = upstream.add("cloud", Scenario(tokens=20))
    refuser = upstream.add("refuser", Scenario(text=REFUSAL))
    tiny = {
        "name": "refuser",
        "kind": "openai",
        "url": refuser,
        "model": "small",
        "boundary": "site",
    }
    cascade = {"mode": "stream", "check_chars": 40}
    with Router(_settings(tmp_path, cloud, cascade, tiny=tiny)) as router:
        events = list(router.stream(QUESTION, max_tokens=24))
        router.accounting.ledger.flush()
    assert "".join(e.text for e in events) == STRONG
    assert upstream.count("refuser") == 1 and upstream.count("cloud") == 1
    rows = _rows(tmp_path, ATTEMPTS)
    assert [(r[0], r[3]) for r in rows] == [("refuser", "escalate"), ("cloud", None)]


def test_the_gateway_reports_the_decisions(tmp_path: Path, upstream: FaultyUpstream) -> None:
    url = upstream.add("cloud", Scenario(tokens=20))
    settings = _settings(tmp_path, url, None)
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 24,
        "tierlm": {"cascade": {"threshold": 1.0}},
    }
    with serve_gateway(settings) as base:
        r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["choices"][0]["message"]["content"] == STRONG
    first, last = d["tierlm"]["cascade"]  # the hint covers every tier: both were judged
    assert first["tier"] == "tiny" and first["decision"] == "escalate" and first["score"] < 1.0
    assert last["tier"] == "cloud" and last["decision"] == "keep"  # nothing stronger left
