"""The whole decision path (real signals + policy) as `tierlm route` runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tierlm import Router
from tierlm.types import Boundary, ChatRequest, Message

LABELLED = Path(__file__).parent / "data" / "sensitivity_prompts.jsonl"
ORG_TERMS = ["Project Falcon", "Kestrel-7", "Northwind Pharma"]  # the labelled set's org terms
TIERLM = str(Path(sys.executable).with_name("tierlm"))
ENV = {
    "TIERLM_SITE_URL": "http://127.0.0.1:9/v1",
    "TIERLM_SITE_MODEL": "llama-70b",
    "OPENAI_API_KEY": "sk-placeholder",
    "ANTHROPIC_API_KEY": "sk-ant-placeholder",
}


@pytest.fixture
def full_stack(monkeypatch: pytest.MonkeyPatch) -> Router:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    return Router.from_config(
        preset="full-stack",
        overrides={"ledger": {"url": "off"}, "routing": {"sensitive_terms": ORG_TERMS}},
    )


def _route(*args: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [TIERLM, "route", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        timeout=120,
        check=False,
    )


def test_simple_command_stays_on_tiny_and_planning_escalates() -> None:
    r = _route("--preset", "full-stack", "--json", "Turn on pump 3")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["tier"] == "tiny" and d["boundary"] == "process" and d["reasons"]
    r = _route(
        "--preset",
        "full-stack",
        "--json",
        "Design a predictive maintenance program for 40 pumps with staffing and a rollout plan",
    )
    d = json.loads(r.stdout)
    assert d["tier"] != "tiny", d
    assert any("escalated past tiny" in x for x in d["reasons"])
    assert d["complexity"] > 0.35


@pytest.mark.parametrize(
    "prompt",
    [
        "Charge the replacement seal to card 4111 1111 1111 1111, exp 09/27.",
        "Use this key for the integration: sk-proj-4fJ9kLmN2pQrStUvWxYz0123456789abcdefGHIJ",
    ],
)
def test_a_card_or_an_api_key_never_has_an_external_candidate(prompt: str) -> None:
    for extra in ([], ["--privacy", "public"], ["--quality", "1.0"]):
        r = _route("--preset", "full-stack", "--json", *extra, prompt)
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        assert d["sensitive"] and d["privacy"] == "private"
        assert all(c["boundary"] != "external" for c in d["candidates"]), d
        # findings carry kinds and spans, never the value
        assert "4111" not in r.stdout and "sk-proj" not in r.stdout


def test_no_labelled_sensitive_prompt_can_leave_the_site(full_stack: Router) -> None:
    rows = [json.loads(line) for line in LABELLED.read_text().splitlines() if line.strip()]
    sensitive = [r for r in rows if r["sensitive"]]
    assert len(rows) >= 100 and len(sensitive) >= 50
    leaks = []
    for row in sensitive:
        messages = row.get("messages") or [row["prompt"]]  # split values: several messages
        request = ChatRequest(messages=[Message(role="user", content=m) for m in messages])
        plan = full_stack.plan(request)
        if any(c.boundary is Boundary.EXTERNAL for c in plan.candidates):
            leaks.append(messages[0][:60])
    assert leaks == []


def test_route_jsonl_keeps_order_and_reports_bad_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"prompt": "Turn on pump 3"}),
        "not json",
        json.dumps(
            {"messages": [{"role": "user", "content": "My IBAN is DE89370400440532013000"}]}
        ),
        json.dumps({"prompt": ""}),
        json.dumps({"prompt": "hi", "privacy": "private"}),
    ]
    f = tmp_path / "in.jsonl"
    f.write_text("\n".join(lines) + "\n")
    r = _route("--preset", "full-stack", "--jsonl", str(f))
    assert r.returncode == 2  # every line is answered, then the bad ones are named
    assert r.stderr.strip() == "error: 2 line(s) could not be routed (line 2, 4)"
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(out) == 5
    assert out[0]["tier"] == "tiny"
    assert out[1] == {"line": 2, "error": out[1]["error"]}
    assert out[2]["privacy"] == "private" and out[2]["findings"][0]["kind"] == "iban"
    assert "error" in out[3]
    assert out[4]["privacy"] == "private"
    # stdin works too
    r2 = subprocess.run(
        [TIERLM, "route", "--preset", "full-stack", "--jsonl", "-"],
        input=lines[0] + "\n",
        capture_output=True,
        text=True,
        env={**__import__("os").environ, **ENV},
        timeout=120,
        check=False,
    )
    assert json.loads(r2.stdout)["tier"] == "tiny"


def test_huge_and_odd_prompts_route_without_crashing(full_stack: Router) -> None:
    huge = "word " * 400_000  # ~2 MB, far beyond every context window
    plan = full_stack.plan(ChatRequest.from_prompt(huge))
    assert plan.task["long_context"] is True
    assert all(c.tier != "tiny" for c in plan.candidates)
    odd = "caf\udce9 \x00 \ufffd emoji 🚀"
    assert full_stack.plan(ChatRequest.from_prompt(odd)).candidates
