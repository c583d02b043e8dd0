"""Layer-0 rules through the real gateway (uvicorn on 127.0.0.1) and the Router: each action
kind, the webhook against a local server (answers, failures, timeouts), no model call, the
ledger record, and ``tierlm route`` explaining which rule matched and why others did not."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import ValidationError

from fakes import serve
from layer0_support import webhook_app
from server_util import fake_openai_upstream, serve_gateway, settings, upstream_backend
from tierlm import Router
from tierlm.cli.main import app as cli_app
from tierlm.config.settings import Settings

PUMP_TOOL = {
    "type": "function",
    "function": {
        "name": "set_pump",
        "parameters": {
            "type": "object",
            "properties": {"id": {"type": "integer"}, "state": {"type": "string"}},
        },
    },
}
RULES: list[dict[str, Any]] = [
    {
        "name": "pump",
        "match": {
            "regex": r"(?i)\bturn (?P<state>on|off) pump (?P<id>\d+)\b",
            "types": {"id": "int"},
        },
        "action": {
            "kind": "tool_call",
            "name": "set_pump",
            "arguments": {"id": "{id}", "state": "{state}"},
        },
    },
    {
        "name": "greet",
        "match": {
            "examples": ["say hello to {who}", "greet {who}"],
            "slots": {"who": {"pattern": "(?:alice|bob|carol)"}},
            "threshold": 0.6,
        },
        "action": {"kind": "template", "text": "Hello, {who}!"},
    },
    {
        "name": "status",
        "match": {"regex": r"(?i)^status of pump (?P<id>\d+)$", "types": {"id": "int"}},
        "action": {"kind": "callable", "target": "layer0_support:pump_state"},
    },
    {
        "name": "read",
        "match": {"regex": r"(?i)^read pump (?P<id>\d+)$", "types": {"id": "int"}},
        "action": {"kind": "callable", "target": "layer0_support:pump_call"},
    },
    {
        "name": "broken",
        "match": {"regex": r"^broken rule$"},
        "action": {"kind": "callable", "target": "layer0_support:wrong_shape"},
    },
]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Any]:
    with fake_openai_upstream() as app:
        yield app


@pytest.fixture(scope="module")
def hooks() -> Iterator[Any]:
    app = webhook_app()
    with serve(app) as url:
        app.state.url = url
        yield app


def _webhook(name: str, url: str, path: str, **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "match": {"regex": rf"(?i)^{name} (?P<tank>\d+)$", "types": {"tank": "int"}},
        "action": {"kind": "webhook", "url": url + path, "timeout": 0.3, **kw},
    }


@pytest.fixture(scope="module")
def gateway(upstream: Any, hooks: Any) -> Iterator[str]:
    rules = [
        *RULES,
        _webhook("level", hooks.state.url, "/ok"),
        _webhook("flush", hooks.state.url, "/text"),
        _webhook("fail", hooks.state.url, "/fail"),
        _webhook("hang", hooks.state.url, "/hang"),
        _webhook("gone", "http://127.0.0.1:9", "/x"),
    ]
    s = settings(
        [upstream_backend("site", upstream.state.url, "plain")],
        [{"name": "site", "backends": ["site"]}],
        rules=rules,
        cache={"semantic": {"embedder": "hashed"}},
    )
    with serve_gateway(s) as url:
        yield url


def _chat(url: str, text: str, **body: Any) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": text}], **body},
        timeout=10,
    )


def test_turn_on_pump_3_is_a_tool_call_with_no_model_call(gateway: str, upstream: Any) -> None:
    before = len(upstream.state.requests)
    r = _chat(gateway, "Turn on pump 3", tools=[PUMP_TOOL])
    assert r.status_code == 200, r.text
    body = r.json()
    call = body["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "set_pump"
    assert json.loads(call["function"]["arguments"]) == {"id": 3, "state": "on"}
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert r.headers["x-tierlm-tier"] == "rules"
    assert r.headers["x-tierlm-boundary"] == "process"
    assert r.headers["x-tierlm-cache"] == "bypass"
    assert body["tierlm"]["rule"] == "pump"
    assert len(upstream.state.requests) == before  # no model was asked


def test_a_tool_call_rule_needs_the_client_to_offer_the_tool(gateway: str, upstream: Any) -> None:
    before = len(upstream.state.requests)
    r = _chat(gateway, "Turn on pump 3")
    assert r.headers["x-tierlm-tier"] == "site"
    assert len(upstream.state.requests) == before + 1


def test_example_rule_fills_its_slot_and_streams(gateway: str) -> None:
    r = _chat(gateway, "Please say hello to bob")
    assert r.json()["choices"][0]["message"]["content"] == "Hello, bob!"
    with httpx.stream(
        "POST",
        gateway + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "greet carol"}], "stream": True},
        timeout=10,
    ) as s:
        assert s.headers["x-tierlm-tier"] == "rules"
        text = "".join(s.iter_text())
    chunks = [json.loads(x[6:]) for x in text.split("\n\n") if x.startswith("data: {")]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert content == "Hello, carol!"
    assert text.rstrip().endswith("data: [DONE]")


def test_example_rule_without_its_slot_does_not_match(gateway: str) -> None:
    r = _chat(gateway, "say hello to dave")
    assert r.headers["x-tierlm-tier"] == "site"


def test_callable_rules(gateway: str) -> None:
    assert _chat(gateway, "status of pump 7").json()["choices"][0]["message"]["content"] == (
        "pump 7 is running"
    )
    msg = _chat(gateway, "read pump 2").json()["choices"][0]["message"]
    assert msg["tool_calls"][0]["function"]["name"] == "read_pump"
    r = _chat(gateway, "broken rule")
    assert r.status_code == 502
    assert "expected text" in r.json()["error"]["message"]


def test_webhook_rule_sends_slots_not_messages(gateway: str, hooks: Any) -> None:
    r = _chat(gateway, "level 4")
    assert r.json()["choices"][0]["message"]["content"] == "level of tank 4: 73%"
    seen = hooks.state.seen[-1]
    assert seen["slots"] == {"tank": 4} and seen["rule"] == "level"
    assert "messages" not in seen
    assert r.headers["x-tierlm-boundary"] == "site"
    assert _chat(gateway, "flush 1").json()["choices"][0]["message"]["content"] == "done"


@pytest.mark.parametrize(
    ("text", "status", "code"),
    [
        ("fail 1", 502, "backend_error"),
        ("hang 1", 504, "backend_timeout"),
        ("gone 1", 503, "backend_unavailable"),
    ],
)
def test_webhook_failures_are_mapped(gateway: str, text: str, status: int, code: str) -> None:
    r = _chat(gateway, text)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_webhook_to_a_public_address_must_say_external() -> None:
    rule = _webhook("x", "http://8.8.8.8", "/hook")
    with pytest.raises(ValidationError, match="declare boundary: external"):
        settings(
            [upstream_backend("s", "http://127.0.0.1:9", "plain")],
            [{"name": "s", "backends": ["s"]}],
            rules=[rule],
        )


def test_webhooks_stay_within_the_request_privacy_and_the_key(tmp_path: Path) -> None:
    from tierlm.config.settings import ApiKeyConfig
    from tierlm.policy import Conditions
    from tierlm.types import ChatRequest

    rules = [
        _webhook("ext", "http://127.0.0.1:9", "/hook", boundary="external"),
        _webhook("lan", "http://127.0.0.1:9", "/hook"),
    ]
    s = settings(
        [upstream_backend("s", "http://127.0.0.1:9", "plain", boundary="host")],
        [{"name": "s", "backends": ["s"]}],
        rules=rules,
    )
    host_only = ApiKeyConfig(name="k", hash="0" * 64, max_privacy_boundary="host")
    with Router(s) as router:
        public = router.plan(ChatRequest.from_prompt("ext 5"))
        private = router.plan(ChatRequest.from_prompt("ext 5", hints={"privacy": "private"}))
        lan = router.plan(ChatRequest.from_prompt("lan 5"), Conditions(api_key=host_only))
    assert public.candidates[0].tier == "rules"
    assert public.candidates[0].boundary.label == "external"
    assert private.candidates[0].tier == "s"
    assert lan.candidates[0].tier == "s"
    assert lan.layer0["rules"][1]["why"] == (
        "matched, but its webhook is site and api key 'k' stays within host"
    )
    assert private.layer0["rules"][0]["why"] == (
        "matched, but its webhook is external and the request is private"
    )


def test_rule_answers_are_in_the_ledger(tmp_path: Path) -> None:
    s = Settings.model_validate(
        {
            "data_dir": str(tmp_path),
            "backends": [upstream_backend("s", "http://127.0.0.1:9", "plain")],
            "tiers": [{"name": "s", "backends": ["s"]}],
            "routing": {"complexity_method": "length"},
            "rules": RULES,
        }
    )
    with Router(s) as router:
        resp = router.chat("status of pump 4")
        router.accounting.ledger.flush()
    assert resp.text == "pump 4 is stopped"
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        rows = db.execute(
            "SELECT tier, backend, boundary, cost_usd, outcome FROM requests"
        ).fetchall()
    assert rows == [("rules", "rules", "process", 0.0, "ok")]


def test_route_explains_the_rules(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "backends": [upstream_backend("s", "http://127.0.0.1:9", "plain")],
                "tiers": [{"name": "s", "backends": ["s"]}],
                "routing": {"complexity_method": "length"},
                "ledger": {"url": "off"},
                "cache": {"semantic": {"embedder": "hashed"}},
                "rules": RULES,
            }
        )
    )
    run = CliRunner().invoke(cli_app, ["route", "--config", str(cfg), "--json", "status of pump 2"])
    assert run.exit_code == 0, run.output
    d = json.loads(run.output)
    assert (d["tier"], d["boundary"]) == ("rules", "process")
    assert d["layer0"]["rule"] == "status"
    whys = {w["rule"]: w["why"] for w in d["layer0"]["rules"]}
    assert whys["pump"] == "regex did not match"
    assert whys["greet"].startswith("slot 'who' not found")
    text = CliRunner().invoke(cli_app, ["route", "--config", str(cfg), "status of pump 2"])
    assert "rule 'status' matched its regex" in text.output
