"""The one privacy module: levels, ceilings, key access, what is scanned and redacted; and the
paths around it: retries and mid-stream continuations of ``enhanced`` requests, feedback
notes and scoring rights, refused requests in the ledger."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakes import serve
from fakes.faulty_upstream import FaultyUpstream, Scenario, openai_error
from fakes.openai_server import make_app
from server_util import ADMIN_KEY, USER_KEY, settings, sha, upstream_backend
from tierlm.config.settings import ApiKeyConfig
from tierlm.privacy import (
    FIELD_INDEX,
    PrivacyGuard,
    ceiling,
    effective_level,
    key_reaches,
    needs_redaction,
)
from tierlm.server import create_app
from tierlm.signals.sensitivity import SensitivityDetector
from tierlm.types import Boundary, ChatRequest, Finding, Message, Privacy, ToolCall

EMAIL = "maria.keller@posteo.de"
OTHER_KEY = "tlm-test-other-key-0123456789"


def _key(**kw: Any) -> ApiKeyConfig:
    return ApiKeyConfig(name="k", hash="0" * 64, **kw)


def test_enhanced_stays_enhanced_with_findings_and_public_becomes_private() -> None:
    found = [Finding("email", 0, 5)]
    reasons: list[str] = []
    assert effective_level(Privacy.PUBLIC, None, None, found, reasons) is Privacy.PRIVATE
    assert "raised to private" in reasons[0]
    assert effective_level(Privacy.PUBLIC, None, Privacy.ENHANCED, found) is Privacy.ENHANCED
    assert effective_level(Privacy.PUBLIC, _key(privacy=Privacy.ENHANCED), None, []) is (
        Privacy.ENHANCED
    )
    # nothing lowers a level: not the hint, not the absence of findings
    assert effective_level(Privacy.PRIVATE, None, Privacy.PUBLIC, []) is Privacy.PRIVATE
    assert effective_level(Privacy.PUBLIC, _key(privacy=Privacy.PRIVATE), Privacy.PUBLIC, []) is (
        Privacy.PRIVATE
    )


def test_ceilings_and_key_access() -> None:
    assert ceiling(Privacy.PRIVATE) is Boundary.SITE
    assert ceiling(Privacy.ENHANCED) is ceiling(Privacy.PUBLIC) is Boundary.EXTERNAL
    assert ceiling(Privacy.PUBLIC, _key(max_privacy_boundary="host")) is Boundary.HOST
    assert ceiling(Privacy.PRIVATE, _key(max_privacy_boundary="external")) is Boundary.SITE
    key = _key(tiers=["tiny", "site"], max_privacy_boundary="site")
    assert key_reaches(key, "site", Boundary.SITE)
    assert not key_reaches(key, "cloud", Boundary.SITE)  # tier not allowed
    assert not key_reaches(key, "site", Boundary.EXTERNAL)  # beyond the key's boundary
    assert key_reaches(None, "cloud", Boundary.EXTERNAL)
    assert needs_redaction(Privacy.ENHANCED, Boundary.EXTERNAL)
    assert not needs_redaction(Privacy.ENHANCED, Boundary.SITE)
    assert not needs_redaction(Privacy.PUBLIC, Boundary.EXTERNAL)


@pytest.fixture(scope="module")
def guard() -> PrivacyGuard:
    return PrivacyGuard(SensitivityDetector())


def _everywhere() -> ChatRequest:
    return ChatRequest(
        messages=[
            Message(role="user", content="Look her up.", name=EMAIL),
            Message(
                role="assistant",
                content=[{"type": "refusal", "refusal": f"not {EMAIL}"}],
                tool_calls=[
                    ToolCall(id="c1", function={"name": "lookup", "arguments": {"who": EMAIL}})
                ],
            ),
        ],
        tools=[{"type": "function", "function": {"name": "f", "description": EMAIL}}],
        stop=[EMAIL],
        extra={"metadata": {EMAIL: "key"}, "user": EMAIL},
    )


def test_scan_covers_every_forwarded_text_once(guard: PrivacyGuard) -> None:
    findings = guard.scan(_everywhere())
    assert [f.kind for f in findings] == ["email"] * 7
    # the tool-call arguments are the detector's own (message 1); the rest are fields
    assert sum(f.message_index == 1 for f in findings) == 1
    assert sum(f.message_index == FIELD_INDEX for f in findings) == 6


def test_redact_leaves_no_finding_and_keeps_structure(guard: PrivacyGuard) -> None:
    request = _everywhere()
    red = guard.redact(request)
    assert red is not None
    dumped = red.model_dump_json()
    assert EMAIL not in dumped and "[EMAIL]" in dumped
    assert guard.scan(red) == []
    assert EMAIL in request.model_dump_json()  # a copy: the original is untouched
    calls = red.messages[1].tool_calls or []
    assert json.loads(calls[0].function["arguments"]) == {"who": "[EMAIL]"}
    assert red.messages[1].content == [{"type": "refusal", "refusal": "not [EMAIL]"}]


def test_opaque_payloads_are_not_scanned_and_cannot_be_redacted(guard: PrivacyGuard) -> None:
    url = "data:image/png;base64,iVBORw0KGgo="
    part = {"type": "image_url", "image_url": {"url": url, "detail": "low"}}
    request = ChatRequest(messages=[Message(role="user", content=[part])])
    assert guard.scan(request) == []
    assert guard.redact(request) is None  # no redacted copy: it does not leave under enhanced
    text_only = ChatRequest(messages=[Message(role="user", content="What is on a gauge?")])
    assert guard.redact(text_only) is not None


# -- retries and continuations of an `enhanced` request -------------------------------------
CARD = "4556 7375 8689 9855"


@pytest.fixture
def up() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as u:
        yield u


def _faulty_gateway(up: FaultyUpstream, site: Scenario, cloud: Scenario) -> Any:
    fast = {"connect": 0.5, "first_token": 2.0, "stall": 1.0, "total": 10.0}
    return settings(
        [
            {
                "name": "site",
                "kind": "openai",
                "url": up.add("site", site),
                "model": "m",
                "boundary": "site",
                "timeouts": fast,
            },
            {
                "name": "cloud",
                "kind": "openai",
                "url": up.add("cloud", cloud),
                "model": "m",
                "boundary": "external",
                "api_key": "sk-test-0123",
                "timeouts": fast,
            },
        ],
        [{"name": "site", "backends": ["site"]}, {"name": "cloud", "backends": ["cloud"]}],
    )


def _prompt() -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": f"Card {CARD}, say words"}]}


def test_retries_of_an_enhanced_request_are_redacted(up: FaultyUpstream) -> None:
    cloud = Scenario("status", status=500, body=openai_error("boom", "server_error", None), times=1)
    s = _faulty_gateway(up, Scenario("healthy"), cloud)
    with serve(create_app(s), lifespan="on", start_within=60) as url:
        resp = httpx.post(
            url + "/v1/chat/completions",
            json=_prompt(),
            headers={"x-tierlm-privacy": "enhanced", "x-tierlm-optimize": "quality"},
            timeout=30,
        )
    assert resp.status_code == 200 and resp.headers["x-tierlm-backend"] == "cloud", resp.text
    bodies = up.bodies("cloud")
    assert len(bodies) == 2  # the first try failed, the retry answered
    for body in bodies:
        assert CARD not in json.dumps(body) and "[PAYMENT_CARD]" in json.dumps(body)


def test_a_continuation_to_the_cloud_is_redacted(up: FaultyUpstream) -> None:
    s = _faulty_gateway(up, Scenario("cut", after=5, tokens=20), Scenario("healthy", tokens=20))
    with serve(create_app(s), lifespan="on", start_within=60) as url:
        body = {**_prompt(), "stream": True}
        with httpx.stream(
            "POST",
            url + "/v1/chat/completions",
            json=body,
            headers={"x-tierlm-privacy": "enhanced"},
            timeout=30,
        ) as resp:
            assert resp.status_code == 200
            assert resp.headers["x-tierlm-backend"] == "site"  # committed to the site first
            text = "".join(resp.iter_text())
    assert "[DONE]" in text
    assert CARD in json.dumps(up.bodies("site")[0])  # the site may see it
    (continued,) = up.bodies("cloud")
    assert continued["messages"][-2]["role"] == "assistant"  # it is the continuation
    assert CARD not in json.dumps(continued) and "[PAYMENT_CARD]" in json.dumps(continued)


# -- feedback and refused requests in the ledger --------------------------------------------
@pytest.fixture(scope="module")
def ledger_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("fb")
    with serve(make_app()) as upstream:
        s = settings(
            [
                upstream_backend("site", upstream, "plain"),
                upstream_backend("cloud", upstream, "gpt", boundary="external", api_key="sk-x1"),
            ],
            [{"name": "site", "backends": ["site"]}, {"name": "cloud", "backends": ["cloud"]}],
            ledger={"url": f"sqlite:///{tmp / 'l.sqlite3'}"},
            server={
                "api_keys": [
                    {"name": "user", "hash": sha(USER_KEY)},
                    {"name": "other", "hash": sha(OTHER_KEY), "tiers": ["site"]},
                    {"name": "admin", "hash": sha(ADMIN_KEY), "admin": True},
                ]
            },
        )
        app = create_app(s)
        with serve(app, lifespan="on", start_within=60, grace=2) as url:
            yield url, app


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _rows(app: Any, sql: str, *args: Any) -> list[Any]:
    ledger = app.state.gateway.ledger
    assert ledger.flush(10)
    with ledger.store.transaction("read") as tx:
        return list(tx.q(sql, args))


def test_feedback_text_is_redacted_and_only_the_owner_or_admin_scores(
    ledger_gateway: tuple[str, Any],
) -> None:
    url, app = ledger_gateway
    body = {"model": "site", "messages": [{"role": "user", "content": "Say hello."}]}
    resp = httpx.post(url + "/v1/chat/completions", json=body, headers=_auth(USER_KEY))
    assert resp.status_code == 200, resp.text
    rid = resp.headers["x-tierlm-request-id"]
    note = {"request_id": rid, "score": 0.2, "text": f"mail me at {EMAIL}"}
    other = httpx.post(url + "/v1/feedback", json=note, headers=_auth(OTHER_KEY))
    assert other.status_code == 403, other.text
    own = httpx.post(url + "/v1/feedback", json=note, headers=_auth(USER_KEY))
    assert own.status_code == 200, own.text
    admin = httpx.post(url + "/v1/feedback", json={**note, "text": None}, headers=_auth(ADMIN_KEY))
    assert admin.status_code == 200, admin.text
    texts = [r[0] for r in _rows(app, "SELECT text FROM feedback WHERE request_id = ?", rid)]
    assert sorted(texts, key=str) == sorted([None, "mail me at [EMAIL]"], key=str)


def test_a_refused_request_is_recorded_with_its_privacy_and_findings(
    ledger_gateway: tuple[str, Any],
) -> None:
    url, app = ledger_gateway
    body = {"model": "cloud", "messages": [{"role": "user", "content": f"Write to {EMAIL}"}]}
    resp = httpx.post(url + "/v1/chat/completions", json=body, headers=_auth(USER_KEY))
    assert resp.status_code >= 400 and resp.status_code != 500, resp.text
    rid = resp.headers["x-tierlm-request-id"]
    ((privacy, findings),) = _rows(app, "SELECT privacy, findings FROM requests WHERE id = ?", rid)
    assert privacy == "private"
    assert "email" in json.loads(findings)


def test_a_key_sees_only_the_models_it_may_use(ledger_gateway: tuple[str, Any]) -> None:
    url, _ = ledger_gateway
    narrow = httpx.get(url + "/api/tags", headers=_auth(OTHER_KEY)).json()["models"]
    wide = httpx.get(url + "/api/tags", headers=_auth(USER_KEY)).json()["models"]
    assert [m["name"] for m in narrow] == ["auto", "site"]
    assert {"site", "cloud"} <= {m["name"] for m in wide}
    shown = httpx.post(url + "/api/show", json={"model": "cloud"}, headers=_auth(OTHER_KEY))
    assert shown.status_code == 404 and "error" in shown.json()
    models = httpx.get(url + "/v1/models", headers=_auth(OTHER_KEY)).json()["data"]
    assert "cloud" not in {m["id"] for m in models}
