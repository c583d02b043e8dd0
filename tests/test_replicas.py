"""Two replicas behave as one: two real ``tierlm serve`` processes on one config, sharing a
real PostgreSQL (ledger, budgets) and a real Redis (rate limits, answer cache), in front of
two metered fake upstreams (``cloud``: external and priced; ``local``: a host backend that
costs nothing and streams at 20 ms a chunk).

- Budgets hold under concurrent load split across both replicas: what the provider billed,
  the ledger's costs and the budget row all stay within the limit, and the requests that no
  longer fit are answered by the local tier, not refused.
- Rate limits hold: ``rpm`` N, 3N concurrent requests across both, N admitted (plus what the
  bucket refilled while they ran, at N a minute), the rest 429 with ``Retry-After``.
- A replica's death loses no answered request: with ``ledger.commit_before_reply``, every
  request that got a whole answer (a JSON reply, or a stream to its ``[DONE]``) from either
  replica has its record in PostgreSQL the moment the answer arrived, even from the replica
  SIGKILLed mid-load; the other replica goes on answering; the dead one's clients get
  connection errors, never a wrong or truncated answer marked complete.
- The shared database going away does not stop a replica: the budgets count as unavailable,
  so requests are answered by the local tier (nothing paid goes out unchecked), not failed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from starlette.applications import Starlette

from fakes import serve
from fakes.metered_server import billed_usd
from fakes.metered_server import make_app as metered_app
from pg_fixture import new_database
from server_util import serve_gateway, sha, start_serve
from tierlm.config.settings import Settings

pytestmark = pytest.mark.postgres

PRICE = {"input": 5.0, "output": 15.0}  # USD per million tokens
BUDGET = 0.006  # USD a month, global: about 20 answers from the cloud tier
LOAD_KEY = "tlm-replicas-load-0123456789"
LIMITED_KEY = "tlm-replicas-limited-0123456789"
RPM = 8


@dataclass
class Cluster:
    urls: list[str]
    procs: list[subprocess.Popen[bytes]]
    cloud: Starlette
    local: Starlette
    db: str


def _config(cloud: str, local: str, db: str, redis_url: str, tmp: Path) -> dict[str, Any]:
    timeouts = {"connect": 1.0, "first_token": 10.0}
    backend = {"kind": "openai", "tools": False, "timeouts": timeouts}
    return {
        "deployment": "replicas-test",
        "backends": [
            {
                **backend,
                "name": "local",
                "url": local + "/v1",
                "model": "metered-slow",
                "boundary": "host",
            },
            {
                **backend,
                "name": "cloud",
                "url": cloud + "/v1",
                "model": "metered",
                "boundary": "external",
                "price": PRICE,
                "api_key": "sk-fake-cloud",
            },
        ],
        "tiers": [
            {"name": "local", "backends": ["local"], "strength": 0.0},
            {"name": "cloud", "backends": ["cloud"], "strength": 1.0},
        ],
        "routing": {"complexity_method": "length", "quality": 1.0},  # the cloud tier first
        "ledger": {"url": db, "commit_before_reply": True},
        "budgets": {
            "limits": [{"scope": "global", "period": "month", "usd": BUDGET}],
            "local_only_below": 0.0,
            "per_request_share": 1.0,
        },
        "cache": {"store": "redis", "redis_url": redis_url},
        "server": {
            "rate_limit_url": redis_url,
            "api_keys": [
                {"name": "load", "hash": sha(LOAD_KEY)},
                {"name": "limited", "hash": sha(LIMITED_KEY), "rpm": RPM},
            ],
        },
        "data_dir": str(tmp),
    }


@pytest.fixture(scope="module")
def cluster(
    postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("replicas")
    db = new_database(postgres_url)
    cloud, local = metered_app(), metered_app()
    with ExitStack() as stack:
        cfg = _config(
            stack.enter_context(serve(cloud)), stack.enter_context(serve(local)), db, redis_url, tmp
        )
        started = [start_serve(cfg, tmp) for _ in range(2)]
        procs = [p for p, _ in started]
        try:
            yield Cluster([u for _, u in started], procs, cloud, local, db)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                p.wait(timeout=30)


@dataclass
class Answer:
    rid: str
    replica: int
    status: int | None = None  # None: the connection failed
    tier: str | None = None
    body: dict[str, Any] | None = None
    complete: bool = False  # a whole answer: a JSON reply, or a stream to its [DONE]
    retry_after: str | None = None


def _ask(
    url: str, replica: int, key: str, *, model: str = "auto", stream: bool = False, n: int = 16
) -> Answer:
    """One chat request with a fresh ``x-request-id`` and a prompt nothing cached."""
    rid = "c-" + uuid.uuid4().hex
    out = Answer(rid, replica)
    body = {
        "model": model,
        "stream": stream,
        "max_tokens": n,
        "temperature": 0,
        "messages": [{"role": "user", "content": f"Question {rid}: what is the boiling point?"}],
    }
    headers = {"authorization": f"Bearer {key}", "x-request-id": rid}
    try:
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=30
        ) as r:
            out.status, out.tier = r.status_code, r.headers.get("x-tierlm-tier")
            out.retry_after = r.headers.get("retry-after")
            if r.status_code == 200 and stream:
                events = [line for line in r.iter_lines() if line.startswith("data: ")]
                out.complete = bool(events) and events[-1] == "data: [DONE]"
                text = "".join(
                    c["delta"].get("content") or ""
                    for e in events[:-1]
                    for c in json.loads(e.removeprefix("data: ")).get("choices", [])
                )
                out.body = {"text": text}
            else:
                out.body = json.loads(r.read())
                out.complete = r.status_code == 200
                if out.complete:
                    out.body["text"] = out.body["choices"][0]["message"]["content"]
    except httpx.TransportError:
        out.status = None
    return out


def _expected_text(n: int) -> str:
    """What the metered upstream answers with ``n`` chunks."""
    return "".join(f"t{i % 100:02d} " for i in range(n))


def _recorded(db: str, rids: list[str]) -> dict[str, tuple[str, float, str]]:
    """``client_request_id -> (tier, cost_usd, outcome)`` for the requests in the ledger."""
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT client_request_id, tier, cost_usd, outcome FROM requests "
            "WHERE client_request_id = ANY(%s)",
            (rids,),
        ).fetchall()
    return {r[0]: (r[1], float(r[2] or 0.0), r[3]) for r in rows}


def _refused_attempts(db: str) -> dict[str, str]:
    """``client_request_id -> backend`` of the attempts a budget refused."""
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT r.client_request_id, a.backend FROM attempts a "
            "JOIN requests r ON r.id = a.request_id WHERE a.outcome = 'budget_exceeded'"
        ).fetchall()
    return {r[0]: r[1] for r in rows}


def test_budgets_hold_across_replicas_under_concurrent_load(cluster: Cluster) -> None:
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: _ask(cluster.urls[i % 2], i % 2, LOAD_KEY), range(72)))
    assert [a.status for a in answers] == [200] * 72  # over budget degrades, never fails
    assert all(a.body and a.body["text"] == _expected_text(16) for a in answers)
    tiers = [a.tier for a in answers]
    assert (
        {tiers[i] for i in range(0, 72, 2)}
        == {tiers[i] for i in range(1, 72, 2)}
        == {
            "cloud",
            "local",
        }
    )  # both replicas spent, and both degraded
    refused = _refused_attempts(cluster.db)
    for a in answers:
        if a.tier == "local":  # why not the cloud: the budget, at planning or at reserving
            assert a.body is not None
            planned = any("budget global/month" in r for r in a.body["tierlm"]["reasons"])
            assert planned or refused.get(a.rid) == "cloud", a.body["tierlm"]
    billed = billed_usd(cluster.cloud.state.billed, PRICE["input"], PRICE["output"])
    assert len(cluster.cloud.state.billed) == tiers.count("cloud")
    assert BUDGET / 2 < billed <= BUDGET  # the budget was reached, and never passed
    recorded = _recorded(cluster.db, [a.rid for a in answers])
    assert len(recorded) == 72  # committed before each answer went out
    assert sum(cost for _, cost, _ in recorded.values()) == pytest.approx(billed, rel=1e-6)
    with psycopg.connect(cluster.db) as conn:
        spent, held, limit = conn.execute(
            "SELECT spent_nusd, reserved_nusd, limit_nusd FROM budget_buckets"
        ).fetchone() or (0, 0, 0)
    assert held == 0 and spent <= limit and spent / 1e9 == pytest.approx(billed, rel=1e-6)


def test_rate_limits_hold_across_replicas(cluster: Cluster) -> None:
    before = len(cluster.local.state.billed)
    go = threading.Barrier(3 * RPM)

    def one(i: int) -> Answer:
        go.wait()
        return _ask(cluster.urls[i % 2], i % 2, LIMITED_KEY, model="local", n=2)

    t0 = time.monotonic()
    with ThreadPoolExecutor(3 * RPM) as pool:
        answers = list(pool.map(one, range(3 * RPM)))
    elapsed = time.monotonic() - t0
    statuses = [a.status for a in answers]
    admitted = statuses.count(200)
    refilled = int(elapsed * RPM / 60)  # the bucket refills continuously, N a minute
    assert RPM <= admitted <= RPM + refilled, (admitted, elapsed)
    assert statuses.count(429) == 3 * RPM - admitted
    refused = [a for a in answers if a.status == 429]
    assert all(a.retry_after and int(a.retry_after) >= 1 for a in refused)
    assert all(a.body and a.body["error"]["code"] == "rate_limit_exceeded" for a in refused)
    assert len(cluster.local.state.billed) - before == admitted  # refusals never went upstream


def test_the_shared_database_going_away_degrades_to_local_tiers(
    postgres_url: str, tmp_path: Path
) -> None:
    db = new_database(postgres_url)
    with serve(metered_app()) as cloud, serve(metered_app()) as local:
        cfg = _config(cloud, local, db, "", tmp_path)
        del cfg["cache"], cfg["server"]  # this one needs no Redis
        with serve_gateway(Settings.model_validate(cfg)) as url:
            assert _ask(url, 0, LOAD_KEY).tier == "cloud"
            with psycopg.connect(postgres_url, autocommit=True) as conn:  # the database goes
                name = db.rsplit("/", 1)[1]
                conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
            answers = [_ask(url, 0, LOAD_KEY) for _ in range(3)]
    assert [(a.status, a.tier, a.complete) for a in answers] == [(200, "local", True)] * 3
    assert answers[0].body is not None
    assert any("budget unavailable" in r for r in answers[0].body["tierlm"]["reasons"])


def test_a_killed_replica_loses_no_answered_request(cluster: Cluster) -> None:
    a_answered = threading.Event()
    done: list[Answer] = []
    lock = threading.Lock()

    def one(i: int) -> Answer:
        replica = i % 2
        stream = i % 3 == 0  # a third stream from the local tier, 8 chunks 20 ms apart
        got = _ask(
            cluster.urls[replica],
            replica,
            LOAD_KEY,
            model="local" if stream else "auto",
            stream=stream,
            n=8 if stream else 16,
        )
        with lock:
            done.append(got)
            if sum(1 for d in done if d.replica == 0 and d.complete) >= 15:
                a_answered.set()
        return got

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(160)]
        assert a_answered.wait(120), "replica A answered too few requests"
        cluster.procs[0].send_signal(signal.SIGKILL)  # mid-load: requests are in flight
        answers = [f.result() for f in futures]
    assert cluster.procs[0].wait(timeout=10) == -signal.SIGKILL
    on_a = [x for x in answers if x.replica == 0]
    on_b = [x for x in answers if x.replica == 1]
    assert all(x.complete for x in on_b)  # the survivor answered every request sent to it
    # the dead replica's clients: a whole answer, or a connection error; nothing in between
    assert all(x.complete or x.status is None for x in on_a), [
        (x.status, x.body) for x in on_a if not x.complete and x.status is not None
    ]
    assert any(x.status is None for x in on_a)  # some were cut off or refused
    for x in answers:
        if x.complete:
            assert x.body is not None
            assert x.body["text"] in (_expected_text(8), _expected_text(16))
    answered = [x.rid for x in answers if x.complete]
    recorded = _recorded(cluster.db, answered)  # read at once: no flush, no waiting
    missing = sorted(set(answered) - set(recorded))
    assert not missing, f"{len(missing)} answered requests have no ledger record"
    assert all(outcome == "ok" for _, _, outcome in recorded.values())
