"""Reports on a generated month of traffic: numbers, recommendations, JSON, PNG, HTTP."""

from __future__ import annotations

import json
import math
import random
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
import typer
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route
from typer.testing import CliRunner

from ledger_support import DAY, db_url, open_url, traffic
from tierlm.cli.report import register
from tierlm.ledger import Ledger, RequestRecord, rollups
from tierlm.ledger.advice import scored_well_up_to
from tierlm.ledger.http import feedback_endpoint, report_endpoint
from tierlm.ledger.reports import parse_since

N = 12_000
CONFIG = """
data_dir: {data_dir}
backends:
  - {{name: smollm, kind: llama_cpp, model: tiny.gguf}}
  - {{name: vllm-lan, kind: openai, model: m, url: "http://10.0.0.2:8000/v1", boundary: site}}
  - {{name: gpt, kind: openai, model: g, url: "https://api.example.com/v1", boundary: external,
     price: {{input: 1.0, output: 4.0}}}}
tiers:
  - {{name: tiny, backends: [smollm]}}
  - {{name: site, backends: [vllm-lan]}}
  - {{name: cloud, backends: [gpt]}}
"""
DBS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _score(r: RequestRecord, rng: random.Random) -> float:
    if r.tier == "tiny":
        return 0.9 if (r.complexity or 0) < 0.35 else 0.3
    return round(rng.uniform(0.75, 1.0), 3)


def _month(ledger: Ledger, start: float) -> tuple[list[RequestRecord], dict[str, float]]:
    recs = traffic(N, start=start, days=29.5)
    for r in recs:
        ledger.record(r)
    assert ledger.flush(60)
    rng = random.Random(3)
    scores = {}
    for r in rng.sample(recs, 450):
        scores[r.id] = _score(r, rng)
        ledger.add_feedback(r.id, score=scores[r.id], text="generated")
    for r in rng.sample([r for r in recs if r.id not in scores], 50):
        ledger.add_feedback(r.id, thumbs="up" if r.tier != "tiny" else "down")
        scores[r.id] = 1.0 if r.tier != "tiny" else 0.0
    return recs, scores


@pytest.mark.parametrize("db", DBS)
def test_report_on_a_month_of_traffic(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    start = time.time() - 30 * DAY
    with open_url(db_url(db, tmp_path, request), tmp_path, strongest_tier="cloud") as ledger:
        recs, scores = _month(ledger, start)
        rep = ledger.report(timedelta(days=30))
    by_id = {r.id: r for r in recs}
    assert rep.requests == N
    tiers = {g.name: g for g in rep.by_tier}
    for name in ("tiny", "site", "cloud"):
        mine = [r for r in recs if r.tier == name]
        assert tiers[name].requests == len(mine)
        assert tiers[name].cost_usd == pytest.approx(sum(r.cost_usd for r in mine))
        assert tiers[name].external == (name == "cloud")
        lat = next(x for x in rep.latency if x.name == name)
        p50, p99 = np.percentile([r.latency_ms for r in mine], [50, 99])
        # from log-spaced histograms: within 0.25% of a sample near the exact percentile
        assert lat.p50_ms == pytest.approx(p50, rel=0.01)
        assert lat.p99_ms == pytest.approx(p99, rel=0.03)
        q = next(q for q in rep.quality if q.tier == name)
        mine_scores = [s for rid, s in scores.items() if by_id[rid].tier == name]
        assert q.ratings == len(mine_scores)
        assert q.mean == pytest.approx(np.mean(mine_scores), abs=1e-4)
    assert {g.name for g in rep.by_key} == {"alice", "bob", "ci"}
    assert sum(g.cost_usd for g in rep.by_backend) == pytest.approx(rep.cost_usd)
    assert rep.fallback_rate == pytest.approx(np.mean([r.fallback for r in recs]))
    assert rep.escalation_rate == pytest.approx(np.mean([r.escalated for r in recs]))
    assert sum(d["requests"] for d in rep.daily) == N and len({d["day"] for d in rep.daily}) >= 30
    down = next(a for a in rep.attempt_failures if a["backend"] == "down")
    assert down["failed"] == down["attempts"] == sum(r.fallback for r in recs)

    tokens = sum(r.prompt_tokens + r.completion_tokens for r in recs)
    assert rep.savings is not None and rep.savings.method == "observed"
    assert rep.savings.baseline_usd == pytest.approx(tokens * 2e-6, rel=1e-6)
    assert rep.savings.saved_usd == pytest.approx(tokens * 2e-6 - rep.cost_usd, rel=1e-6)

    # tiny was scored 0.9 below complexity 0.35 and 0.3 above: scored well up to 0.3.
    tiny = [(by_id[rid].complexity, s) for rid, s in scores.items() if by_id[rid].tier == "tiny"]
    assert scored_well_up_to(tiny)[0] == pytest.approx(0.3)  # type: ignore[index]
    cloud = [r for r in recs if r.tier == "cloud"]
    share = sum((r.complexity or 0) < 0.3 for r in cloud) / len(cloud)
    assert 0.1 < share < 0.4
    assert any(
        t.startswith(
            f"{share:.0%} of requests sent to the cloud were no harder than those the tiny tier"
        )
        for t in rep.recommendations
    ), rep.recommendations
    assert any("of attempts on backend down failed" in t for t in rep.recommendations)


@pytest.mark.parametrize("db", DBS)
def test_rollups_match_raw_rows_and_the_backfill_migration(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = db_url(db, tmp_path, request)
    end = time.time()
    with open_url(url, tmp_path) as ledger:
        for r in traffic(3000, start=end - 10 * DAY, days=9.9, seed=11):
            ledger.record(r)
        ledger.flush()
        kept = ledger.report(timedelta(days=10), until=end).to_dict()
        with ledger.store.transaction("read") as tx:  # a short period: raw rows only
            short = rollups.Totals()
            rollups.from_raw(tx, ledger.store.day_expr, end - 10 * DAY, end, short)
            rollups.hist_from_raw(tx, end - 10 * DAY, end, short)
        with ledger.store.transaction("budget") as tx:  # a ledger from before the roll-ups
            for t in ("rollup_requests", "rollup_hist", "rollup_attempts"):
                tx.q(f"DROP TABLE {t}")
            tx.q("DELETE FROM _migrations WHERE name = '005_rollups'")
    with open_url(url, tmp_path) as again:
        assert again.migrations_applied == ["005_rollups"]
        filled = again.report(timedelta(days=10), until=end).to_dict()
        with again.store.transaction("read") as tx:
            whole = rollups.Totals()
            rollups.from_rollups(tx, 0, 10**9, whole)
            rollups.hist_from_rollups(tx, 0, 10**9, whole)
    for rep in (kept, filled):
        rep.pop("seconds")
    assert filled == kept
    assert sum(v[0] for v in whole.groups.values()) == 3000
    assert whole.hist == short.hist and whole.attempts == short.attempts
    assert {k: [round(x, 9) for x in v] for k, v in whole.groups.items()} == {
        k: [round(x, 9) for x in v] for k, v in short.groups.items()
    }


@pytest.mark.parametrize("db", DBS)
def test_hourly_series_and_privacy_kept_local(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``hourly`` adds up to the raw rows per hour and tier over periods with and without whole
    hours inside; ``privacy_kept_local`` counts the plans that left a backend out for its
    boundary (the last day only)."""
    end = (math.floor(time.time() / 3600) - 1) * 3600 + 1234.5  # inside an hour, in the past
    recs = traffic(900, start=end - 6 * 3600, days=6 / 24, seed=5)
    for i, r in enumerate(recs):
        if i % 9 == 0:
            r.reasons = ["privacy private", "excluded gpt: boundary external is beyond site"]
        elif i % 9 == 1:
            r.reasons = ["excluded gpt: budget global/month has $0 of $1.00 left"]
    with open_url(db_url(db, tmp_path, request), tmp_path) as ledger:
        for r in recs:
            ledger.record(r)
        assert ledger.flush(60)
        for span in (6 * 3600.0, 2.5 * 3600.0, 2400.0, 600.0):
            rep = ledger.report(timedelta(seconds=span), until=end)
            mine = [r for r in recs if end - span <= r.ts < end]
            want: dict[tuple[int, str], list[float]] = {}
            for r in mine:
                acc = want.setdefault((math.floor(r.ts / 3600), str(r.tier)), [0, 0.0])
                acc[0] += 1
                acc[1] += r.cost_usd
            got = {(h["hour"], h["tier"]): [h["requests"], h["cost_usd"]] for h in rep.hourly}
            assert got.keys() == want.keys(), span
            for k, (n, cost) in want.items():
                assert got[k][0] == n and got[k][1] == pytest.approx(cost), (span, k)
            assert rep.privacy_kept_local == sum(
                "boundary external is beyond" in " ".join(r.reasons) for r in mine
            )


def test_report_cli_tables_json_and_plots(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    cfg = tmp_path / "tierlm.yaml"
    cfg.write_text(CONFIG.format(data_dir=data_dir))
    with open_url(f"sqlite:///{data_dir / 'ledger.sqlite3'}", tmp_path) as ledger:
        recs, _ = _month(ledger, time.time() - 30 * DAY)
        ledger.record(RequestRecord(id="old", ts=time.time() - 45 * DAY, tier="tiny"))
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    res = runner.invoke(app, ["--config", str(cfg), "--json", "--plot", str(tmp_path / "png")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["requests"] == N  # the 45-day-old request is outside --since 30d
    baseline = sum(r.prompt_tokens * 1.0 + r.completion_tokens * 4.0 for r in recs) / 1e6
    assert out["savings"]["method"] == "price" and out["savings"]["strongest_tier"] == "cloud"
    assert out["savings"]["baseline_usd"] == pytest.approx(baseline, rel=1e-6)
    names = sorted(Path(c).name for c in out["charts"])
    assert names == ["latency.png", "quality.png", "requests_per_day.png", "spend_per_day.png"]
    for c in out["charts"]:
        data = Path(c).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    res = runner.invoke(app, ["--config", str(cfg), "--since", "60d"])
    assert res.exit_code == 0, res.output
    assert f"{N + 1:,} requests" in res.output
    for section in (
        "Spend by tier",
        "Spend by key",
        "Latency",
        "Quality",
        "Savings",
        "Recommendations",
    ):
        assert section in res.output
    res = runner.invoke(app, ["--config", str(cfg), "--since", "lately"])
    assert res.exit_code == 2


def test_parse_since() -> None:
    assert parse_since("30d") == timedelta(days=30)
    assert parse_since("12h") == timedelta(hours=12)
    assert parse_since("1.5w") == timedelta(days=10.5)
    assert parse_since("all") > timedelta(days=365 * 50)
    with pytest.raises(ValueError, match="30d"):
        parse_since("30 days")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Ledger]]:
    ledger = open_url(f"sqlite:///{tmp_path / 'h.db'}", tmp_path)
    app = Starlette(
        routes=[
            # str.upper stands in for the redactor the gateway passes (see tests/test_privacy.py)
            Route("/v1/feedback", feedback_endpoint(ledger, str.upper), methods=["POST"]),
            Route("/admin/report", report_endpoint(ledger)),
        ]
    )
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            lifespan="off",
            ws="none",
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}", ledger
    finally:
        server.should_exit = True
        thread.join(10)
        ledger.close()


def test_feedback_and_report_over_http(served: tuple[str, Ledger]) -> None:
    base, ledger = served
    for r in traffic(200, start=time.time() - 2 * DAY, days=1.9):
        ledger.record(r)  # not flushed: feedback must still find them
    with httpx.Client(base_url=base, timeout=10) as client:
        ok = client.post(
            "/v1/feedback", json={"request_id": "gen-7-3", "score": 0.8, "text": "good answer"}
        )
        assert ok.status_code == 200 and ok.json() == {"ok": True, "request_id": "gen-7-3"}
        assert (
            client.post(
                "/v1/feedback", json={"request_id": "gen-7-4", "thumbs": "down"}
            ).status_code
            == 200
        )
        bad = {
            "not json": (400, "invalid_request"),
            json.dumps({"request_id": "gen-7-3"}): (400, "invalid_request"),
            json.dumps({"request_id": "gen-7-3", "score": 3}): (400, "invalid_request"),
            json.dumps({"request_id": "gen-7-3", "thumbs": "sideways"}): (400, "invalid_request"),
            json.dumps({"request_id": "nope", "score": 1}): (404, "request_not_found"),
            json.dumps([1, 2]): (400, "invalid_request"),
        }
        for body, (status, code) in bad.items():
            r = client.post(
                "/v1/feedback", content=body, headers={"content-type": "application/json"}
            )
            assert r.status_code == status, body
            err = r.json()["error"]
            assert err["code"] == code and err["message"] and "type" in err
        rep = client.get("/admin/report", params={"since": "7d"})
        assert rep.status_code == 200
        body = rep.json()
        assert body["requests"] == 200
        assert sum(q["ratings"] for q in body["quality"]) == 2
        r = client.get("/admin/report", params={"since": "soon"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
