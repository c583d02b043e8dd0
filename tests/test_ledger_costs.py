"""The ledger counts every cent: a request costs what every upstream it reached billed (a cut
stream's first backend, a cascade's rejected answer, every consensus member), budgets settle
on that, and reports put each attempt's cost on the backend and tier that billed it. And it
shows what left the site: each attempt's digest is the SHA-256 of the bytes the upstream got.

Upstreams are the metered fake (real HTTP on 127.0.0.1), which bills from its own counts; the
expected money is computed from those bills, never from tierlm's numbers. A cut stream is the
one exception a provider leaves: its usage never arrives, so tierlm bills its own estimate of
what was generated, checked here against the upstream's count within the estimate's error.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from fakes import serve
from fakes.metered_server import CUT_AFTER, billed_usd
from fakes.metered_server import make_app as metered_app
from ledger_support import db_url
from server_util import settings, upstream_backend
from tierlm import Router
from tierlm.cli.audit import register
from tierlm.ledger.audit import row_hash
from tierlm.types import ChatRequest

PRICES = {  # USD per million tokens, different per backend so a misattribution shows
    "first": {"input": 2.0, "output": 6.0},
    "second": {"input": 30.0, "output": 90.0},
}
PROMPT = "Count from zero, please, one word at a time."
Metered = Callable[[int], list[tuple[str, Any]]]
DBS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture
def metered() -> Iterator[Metered]:
    """``metered(n)``: n separate metered upstreams, ``(url, app)`` each."""
    with ExitStack() as stack:

        def start(n: int) -> list[tuple[str, Any]]:
            apps = [metered_app() for _ in range(n)]
            return [(stack.enter_context(serve(app)), app) for app in apps]

        yield start


def _backend(name: str, url: str, model: str, boundary: str = "external") -> dict[str, Any]:
    return upstream_backend(
        name, url, model, boundary=boundary, price=PRICES[name], api_key="sk-test"
    )


def _router(
    tmp_path: Path,
    backends: list[dict[str, Any]],
    tiers: list[dict[str, Any]],
    url: str | None = None,
) -> Router:
    s = settings(
        backends,
        tiers,
        data_dir=str(tmp_path),
        ledger={"url": url or f"sqlite:///{tmp_path / 'ledger.sqlite3'}"},
        budgets={"limits": [{"usd": 100.0}], "per_request_share": 1.0, "local_only_below": 0.0},
    )
    return Router(s)


def _rows(router: Router, sql: str) -> list[tuple[Any, ...]]:
    with router.accounting.ledger.store.transaction("read") as tx:
        return [tuple(r) for r in tx.q(sql)]


def _bill(app: Any, name: str) -> float:
    return billed_usd(app.state.billed, PRICES[name]["input"], PRICES[name]["output"])


def _costs(router: Router) -> tuple[float, dict[str, float]]:
    """The request's recorded cost and each backend's attempts' cost (one request)."""
    ((total,),) = _rows(router, "SELECT cost_usd FROM requests")
    per: dict[str, float] = {}
    for backend, cost in _rows(router, "SELECT backend, cost_usd FROM attempts ORDER BY n"):
        per[backend] = per.get(backend, 0.0) + cost
    return total, per


def _spent(router: Router) -> float:
    (bucket,) = router.accounting.ledger.budget_state(key=None, tier=None).buckets
    assert bucket.reserved_nusd == 0  # every reservation settled
    return bucket.spent_nusd / 1e9


def _check_money(router: Router, billed: dict[str, float]) -> None:
    """The request costs the sum of its attempts, each attempt what its upstream billed, the
    budget spent exactly that, and the report puts it on the right backends (raw rows and
    hourly roll-ups alike)."""
    router.accounting.ledger.flush()
    total, per = _costs(router)
    assert per == pytest.approx(billed, rel=1e-9, abs=1e-15)
    assert total == pytest.approx(sum(billed.values()), rel=1e-9)
    assert _spent(router) == pytest.approx(total, abs=1e-9 * len(per))  # nano-USD, rounded up
    ledger = router.accounting.ledger
    for until in (None, time.time() + 7200):  # the current hour raw, then from the roll-ups
        rep = ledger.report(timedelta(days=1), until=until)
        assert rep.cost_usd == pytest.approx(total, abs=1e-6)
        by_backend = {g.name: g.cost_usd for g in rep.by_backend}
        paid = {k: v for k, v in billed.items() if v}  # a backend that billed nothing: no row
        assert by_backend == pytest.approx(paid, rel=1e-6), until
        hourly: dict[str, float] = {}  # the dashboard's series: the same attribution
        for h in rep.hourly:
            hourly[h["tier"]] = hourly.get(h["tier"], 0.0) + h["cost_usd"]
        by_tier = {g.name: g.cost_usd for g in rep.by_tier}
        assert hourly == pytest.approx(by_tier, rel=1e-6, abs=1e-12), until


@pytest.mark.parametrize("db", DBS)
def test_a_cascade_escalation_costs_both_answers(
    db: str, tmp_path: Path, metered: Metered, request: pytest.FixtureRequest
) -> None:
    (a_url, a), (b_url, b) = metered(2)
    backends = [_backend("first", a_url, "metered"), _backend("second", b_url, "metered")]
    tiers = [
        {"name": "cheap", "backends": ["first"], "strength": 0.3, "cascade": {"threshold": 1.0}},
        {"name": "strong", "backends": ["second"], "strength": 1.0},
    ]
    with _router(tmp_path, backends, tiers, db_url(db, tmp_path, request)) as router:
        resp = router.chat(PROMPT, max_tokens=12)
        assert resp.backend == "second"
        assert [d["decision"] for d in resp.cascade or []] == ["escalate"]
        billed = {"first": _bill(a, "first"), "second": _bill(b, "second")}
        assert all(v > 0 for v in billed.values())
        _check_money(router, billed)
        rep = router.accounting.ledger.report(timedelta(days=1))
        by_tier = {g.name: (g.requests, g.cost_usd) for g in rep.by_tier}
        assert by_tier["cheap"] == (0, pytest.approx(billed["first"], rel=1e-6))  # billed it
        assert by_tier["strong"] == (1, pytest.approx(billed["second"], rel=1e-6))  # answered


@pytest.mark.parametrize("db", DBS)
def test_consensus_costs_every_member(
    db: str, tmp_path: Path, metered: Metered, request: pytest.FixtureRequest
) -> None:
    (a_url, a), (b_url, b) = metered(2)
    backends = [_backend("first", a_url, "metered"), _backend("second", b_url, "metered")]
    tiers = [{"name": "pair", "backends": ["first", "second"]}]
    with _router(tmp_path, backends, tiers, db_url(db, tmp_path, request)) as router:
        req = ChatRequest.from_prompt(PROMPT, max_tokens=8, hints={"consensus": 2})
        resp = router.chat(req)
        assert [d["decision"] for d in resp.cascade or []].count("majority") == 1
        assert len(a.state.billed) == len(b.state.billed) == 1
        _check_money(router, {"first": _bill(a, "first"), "second": _bill(b, "second")})


def _cut_then_continued(
    tmp_path: Path, metered: Metered, first_boundary: str
) -> tuple[Router, Any, Any, str]:
    """A stream from "first" dies after CUT_AFTER chunks; "second" (a stronger tier) finishes
    it. Returns the open router, both apps and the answer."""
    (a_url, a), (b_url, b) = metered(2)
    backends = [
        _backend("first", a_url, "metered-cut", boundary=first_boundary),
        _backend("second", b_url, "metered"),
    ]
    tiers = [
        {"name": "cheap", "backends": ["first"], "strength": 0.3},
        {"name": "strong", "backends": ["second"], "strength": 1.0},
    ]
    router = _router(tmp_path, backends, tiers)
    text = "".join(ev.text for ev in router.stream(PROMPT, max_tokens=20))
    router.accounting.ledger.flush()
    return router, a, b, text


def test_a_rescued_stream_costs_what_both_upstreams_billed(
    tmp_path: Path, metered: Metered
) -> None:
    router, a, b, text = _cut_then_continued(tmp_path, metered, "external")
    with router:
        assert text.split() == [f"t{i:02d}" for i in range(20)]  # one answer, nothing twice
        (bill_a,), (bill_b,) = a.state.billed, b.state.billed
        assert bill_a.completion_tokens == CUT_AFTER and not bill_a.finished
        assert bill_b.finished
        rows = _rows(router, "SELECT backend, outcome, tokens, cost_usd FROM attempts ORDER BY n")
        assert [r[:2] for r in rows] == [("first", "upstream_protocol_error"), ("second", "ok")]
        # the cut part: no usage arrives from a dead stream, so tierlm bills its own estimate
        # of what was generated; a provider bills its count, which the estimate must be near
        assert rows[0][3] == pytest.approx(_bill(a, "first"), rel=0.3)
        billed = {"first": rows[0][3], "second": _bill(b, "second")}  # the rest: exact
        _check_money(router, billed)
        assert sum(billed.values()) > _bill(b, "second")  # the old record: the last part only


def _sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def test_each_attempt_keeps_the_digest_of_the_bytes_its_upstream_received(
    tmp_path: Path, metered: Metered
) -> None:
    """A stream cut on a site backend and finished by an external one: two attempts, two
    digests, each the SHA-256 of the raw body that upstream recorded; `tierlm audit sent`
    shows both and finds each by the body's bytes; only the external one is chained."""
    router, a, b, _ = _cut_then_continued(tmp_path, metered, "site")
    with router:
        (raw_a,), (raw_b,) = a.state.bodies, b.state.bodies
        rows = _rows(router, "SELECT backend, boundary, sent_digest FROM attempts ORDER BY n")
        assert rows == [("first", "site", _sha(raw_a)), ("second", "external", _sha(raw_b))]
        assert _sha(raw_a) != _sha(raw_b)  # the continuation is another body
        audit = router.accounting.ledger.audit_list()
        assert [(r.backend, r.boundary, r.digest) for r in audit] == [
            ("second", "external", _sha(raw_b))
        ]
        assert router.accounting.ledger.audit_verify().ok
    cfg = tmp_path / "tierlm.yaml"
    cfg.write_text(f"data_dir: {tmp_path}\n")
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    res = runner.invoke(app, ["audit", "sent", "--config", str(cfg), "--json"])
    assert res.exit_code == 0, res.output
    listed = {(line["backend"], line["boundary"], line["digest"]) for line in _json_lines(res)}
    assert listed == {("first", "site", _sha(raw_a)), ("second", "external", _sha(raw_b))}
    for name, raw in (("first", raw_a), ("second", raw_b)):
        body = tmp_path / f"{name}.json"
        body.write_bytes(raw)
        res = runner.invoke(app, ["audit", "sent", "--config", str(cfg), "--body", str(body)])
        assert res.exit_code == 0 and name in res.output and _sha(raw) in res.output, res.output
    body.write_bytes(raw_b + b" ")  # one byte more: not what was sent
    res = runner.invoke(app, ["audit", "sent", "--config", str(cfg), "--body", str(body)])
    assert res.exit_code == 1 and "no attempt in the ledger sent the bytes" in res.output


def _json_lines(res: Any) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in res.output.splitlines() if line.strip()]


def test_a_rewritten_newest_audit_row_is_caught_by_the_attempts_digest(
    tmp_path: Path, metered: Metered
) -> None:
    """Rewriting the newest audit row's digest and recomputing its hash leaves a chain that
    verifies; the digest the attempt kept no longer matches, and verify says so."""
    router = _cut_then_continued(tmp_path, metered, "external")[0]
    with router:
        ledger = router.accounting.ledger
        assert ledger.audit_verify().ok
        row = ledger.audit_list()[0]  # the newest
        forged = {
            "seq": row.seq,
            "ts": row.ts,
            "request_id": row.request_id,
            "api_key": row.api_key,
            "backend": row.backend,
            "tier": row.tier,
            "boundary": row.boundary,
            "privacy": row.privacy,
            "digest": "00" * 32,
        }
        with ledger.store.transaction("budget") as tx:
            tx.q(
                "UPDATE audit SET digest = ?, hash = ? WHERE seq = ?",
                ("00" * 32, row_hash(row.prev_hash, forged), row.seq),
            )
        bad = ledger.audit_verify()
    assert not bad.ok and "audit rows were" in bad.reason, bad
    assert bad.first_bad is None  # the chain itself verifies: only the cross-check sees it


def test_a_fallback_from_site_to_external_digests_every_body_sent(
    tmp_path: Path, metered: Metered
) -> None:
    """The site backend answers 503 to every try (retried, then given up); the external one
    answers. Every try that reached an upstream has the digest of the bytes that upstream
    recorded; the failed tries billed nothing and cost nothing."""
    (a_url, a), (b_url, b) = metered(2)
    backends = [
        _backend("first", a_url, "metered-unavailable", boundary="site"),
        _backend("second", b_url, "metered"),
    ]
    tiers = [{"name": "any", "backends": ["first", "second"]}]
    with _router(tmp_path, backends, tiers) as router:
        resp = router.chat(PROMPT, max_tokens=8)
        assert resp.backend == "second"
        router.accounting.ledger.flush()
        rows = _rows(
            router, "SELECT backend, outcome, cost_usd, sent_digest FROM attempts ORDER BY n"
        )
        sent = [(r[0], r[3]) for r in rows]
        expected = [("first", _sha(raw)) for raw in a.state.bodies]
        expected += [("second", _sha(raw)) for raw in b.state.bodies]
        assert len(a.state.bodies) >= 2 and sent == expected  # every retry, in order
        assert all(r[2] == 0.0 for r in rows if r[0] == "first") and not a.state.billed
        _check_money(router, {"first": 0.0, "second": _bill(b, "second")})
