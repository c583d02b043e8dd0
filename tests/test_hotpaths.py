"""Hot paths on a generated month of traffic recorded into a real SQLite ledger: the clusters,
their volume and cost, the proposed rules (loaded through the config loader and matched by the
real RuleSet), the report's section, and nothing of a prompt when prompts are not stored."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from ledger_support import DAY
from server_util import serve_gateway, settings, upstream_backend
from tierlm.cli.main import app as cli_app
from tierlm.config.loader import load_settings
from tierlm.layer0.embed import HashedEmbedder, load_embedder
from tierlm.layer0.hotpaths import NOT_STORED, HotPaths, hot_paths, shape, snippet
from tierlm.layer0.rules import RuleSet
from tierlm.ledger import AttemptRecord, Ledger, RequestRecord, open_store
from tierlm.types import ChatRequest, Message

PUMP_ON, PUMP_OFF, HOURS, FREE = 600, 200, 150, 400
CLOUD_PRICE = 0.002  # USD per pump command: the frequent command went to the cloud


def _rec(i: int, start: float, rng: random.Random, prompt: str, answer: str) -> RequestRecord:
    cloud = prompt.lower().startswith("turn on")
    tier, backend = ("cloud", "gpt") if cloud else ("tiny", "smollm")
    return RequestRecord(
        id=f"hp-{i}",
        ts=start + rng.random() * 29 * DAY,
        api_key="plant",
        tier=tier,
        backend=backend,
        boundary="external" if cloud else "process",
        privacy="public",
        attempts=[AttemptRecord(backend, tier, "external" if cloud else "process")],
        prompt_tokens=12,
        completion_tokens=8,
        cost_usd=CLOUD_PRICE if cloud else 0.0,
        prompt=prompt,
        completion=answer,
    )


def month(start: float) -> list[RequestRecord]:
    """A month of a plant's traffic: pump commands, one repeated question, free questions."""
    rng = random.Random(11)
    items: list[tuple[str, str]] = []
    for _ in range(PUMP_ON):
        n = rng.randint(1, 40)
        items.append((f"Turn on pump {n}", f"Pump {n} is on."))
    for _ in range(PUMP_OFF):
        n = rng.randint(1, 40)
        items.append((f"turn  off pump {n}", f"Pump {n} is off."))
    items += [("What are the opening hours?", "We open at 8 and close at 17.")] * HOURS
    words = [
        "river",
        "cloud",
        "basalt",
        "sonnet",
        "enzyme",
        "ledger",
        "violin",
        "glacier",
        "orbit",
        "tariff",
    ]
    for _ in range(FREE):
        a, b, c = rng.sample(words, 3)
        items.append((f"Why does the {a} relate to {b} and {c}?", "Because."))
    rng.shuffle(items)
    return [_rec(i, start, rng, p, a) for i, (p, a) in enumerate(items)]


def record_month(path: Path, store_prompts: bool) -> float:
    start = time.time() - 30 * DAY
    with Ledger(
        open_store(f"sqlite:///{path}", path.parent),
        store_prompts=store_prompts,
        spill_path=path.parent / "spill.jsonl",
    ) as ledger:
        for r in month(start):
            ledger.record(r)
        assert ledger.flush(60)
    return start


def run_hot_paths(path: Path, threshold: float = 0.9) -> HotPaths:
    store = open_store(f"sqlite:///{path}", path.parent)
    try:
        with store.transaction("read") as tx:
            end = time.time() + 1
            return hot_paths(tx, HashedEmbedder(), start=0.0, end=end, threshold=threshold)
    finally:
        store.close()


@pytest.fixture(scope="module")
def ledger_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hot") / "ledger.sqlite3"
    record_month(path, store_prompts=True)
    return path


def test_top_cluster_is_the_frequent_command_with_its_volume_and_cost(ledger_path: Path) -> None:
    hp = run_hot_paths(ledger_path)
    assert hp.scanned == PUMP_ON + PUMP_OFF + HOURS + FREE and hp.without_prompt == 0
    top = hp.clusters[0]
    assert top.shape == "turn on pump {n}"
    assert top.requests == PUMP_ON
    assert top.cost_usd == pytest.approx(PUMP_ON * CLOUD_PRICE)
    assert top.model_calls == PUMP_ON
    assert top.tiers == {"cloud": PUMP_ON} and top.backends == {"gpt": PUMP_ON}
    assert all(a.startswith("Pump ") and a.endswith(" is on.") for a in top.answers)
    shapes = {c.shape: c.requests for c in hp.clusters}
    # the near-miss guard keeps "off" apart from "on", though their embeddings are close
    assert shapes["turn off pump {n}"] == PUMP_OFF
    assert shapes["what are the opening hours?"] == HOURS
    assert all(c.requests >= 5 for c in hp.clusters)


def test_proposed_rules_load_through_the_config_loader_and_match_their_cluster(
    ledger_path: Path, tmp_path: Path
) -> None:
    hp = run_hot_paths(ledger_path)
    text = snippet(hp)
    cfg = tmp_path / "tierlm.yaml"
    cfg.write_text(text, encoding="utf-8")
    settings = load_settings(cfg, env={})
    assert [r.name for r in settings.rules] == [c.rule["name"] for c in hp.clusters if c.rule]
    rules = RuleSet(settings.rules, HashedEmbedder)
    tools = [
        {"type": "function", "function": {"name": r.action.name}}
        for r in settings.rules
        if r.action.kind == "tool_call"
    ]

    def answer(prompt: str) -> tuple[str | None, dict[str, object]]:
        req = ChatRequest(
            model="auto", messages=[Message(role="user", content=prompt)], tools=tools
        )
        m, _ = rules.match(req, lambda _b: "")
        return (m.rule.name, m.slots) if m else (None, {})

    by_shape = {c.shape: c.rule["name"] for c in hp.clusters if c.rule}
    on, off = by_shape["turn on pump {n}"], by_shape["turn off pump {n}"]
    hours = by_shape["what are the opening hours?"]
    examples = {s: c.rule["name"] for c in hp.clusters if c.rule for s in c.shapes[:8]}
    for r in month(0.0):
        assert r.prompt is not None
        name, slots = answer(r.prompt)
        if r.prompt.startswith("Turn on"):
            assert (name, slots) == (on, {"pump": int(r.prompt.split()[-1])})
        elif r.prompt.startswith("turn  off"):
            assert (name, slots) == (off, {"pump": int(r.prompt.split()[-1])})
        elif r.prompt.startswith("What"):
            assert (name, slots) == (hours, {})
        else:  # a free question: its own cluster's rule, if it has one; never another's
            assert name not in (on, off, hours), r.prompt
            if shape(r.prompt) in examples:
                assert name == examples[shape(r.prompt)]
    pinned = next(r for r in settings.rules if r.name == hours)
    assert pinned.action.kind == "template"
    assert pinned.action.text == "We open at 8 and close at 17."  # pinned: the answer given


def test_near_shapes_merge_into_an_examples_rule(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    rng = random.Random(5)
    with Ledger(
        open_store(f"sqlite:///{path}", tmp_path),
        store_prompts=True,
        spill_path=tmp_path / "s.jsonl",
    ) as ledger:
        for i in range(40):
            p = ("please turn on pump {}" if i % 2 else "turn on pump {} please").format(i)
            ledger.record(_rec(i, time.time() - 30 * DAY, rng, p, "ok"))
        assert ledger.flush(30)
    hp = run_hot_paths(path, threshold=0.6)
    assert len(hp.clusters) == 1 and hp.clusters[0].requests == 40
    rule = hp.clusters[0].rule
    assert rule is not None and len(rule["match"]["examples"]) == 2
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(snippet(hp), encoding="utf-8")
    (loaded,) = load_settings(cfg, env={}).rules
    rules = RuleSet([loaded], HashedEmbedder)
    tool = [{"type": "function", "function": {"name": rule["action"]["name"]}}]
    req = ChatRequest(
        model="auto", messages=[Message(role="user", content="turn on pump 9 please")], tools=tool
    )
    m, _ = rules.match(req, lambda _b: "")
    assert m is not None and m.slots == {"pump": 9}


def test_nothing_of_a_prompt_when_prompts_are_not_stored(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    record_month(path, store_prompts=False)
    hp = run_hot_paths(path)
    assert hp.clusters == [] and hp.note == NOT_STORED
    assert hp.without_prompt == PUMP_ON + PUMP_OFF + HOURS + FREE
    config = tmp_path / "c.yaml"
    config.write_text(f"data_dir: {tmp_path}\nledger: {{url: 'sqlite:///{path}'}}\n")
    out = CliRunner().invoke(cli_app, ["hotpaths", "-c", str(config)])
    assert out.exit_code == 0, out.output
    assert "ledger.store_prompts: true" in out.output
    rep = CliRunner().invoke(cli_app, ["report", "-c", str(config), "--json"])
    assert rep.exit_code == 0 and json.loads(rep.output)["hot_paths"] == []
    for text in (out.output, rep.output):
        assert "pump" not in text.lower() and "opening hours" not in text.lower()


def test_cli_json_and_report_section(ledger_path: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data_dir: {tmp_path}\nledger: {{url: 'sqlite:///{ledger_path}'}}\n"
        "cache: {semantic: {embedder: hashed}}\n"
    )
    out = CliRunner().invoke(cli_app, ["hotpaths", "-c", str(config), "--json", "--top", "2"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert [c["shape"] for c in data["clusters"]] == ["turn on pump {n}", "turn off pump {n}"]
    assert [r["name"] for r in yaml.safe_load(data["yaml"])["rules"]] == [
        c["rule"]["name"] for c in data["clusters"]
    ]
    text = CliRunner().invoke(cli_app, ["hotpaths", "-c", str(config), "--min-count", "100"])
    assert text.exit_code == 0 and "turn on pump {n}" in text.output and "rules:" in text.output
    assert "Why does" not in text.output  # the free questions are below --min-count
    rep = CliRunner().invoke(cli_app, ["report", "-c", str(config), "--json"])
    top = json.loads(rep.output)["hot_paths"][0]
    assert top == {
        "shape": "turn on pump {n}",
        "requests": PUMP_ON,
        "cost_usd": pytest.approx(PUMP_ON * CLOUD_PRICE),
        "model_calls": PUMP_ON,
    }
    table = CliRunner().invoke(cli_app, ["report", "-c", str(config)])
    assert "Hot paths" in table.output and "turn on pump {n}" in table.output


def test_admin_report_over_http_has_the_hot_paths(ledger_path: Path, tmp_path: Path) -> None:
    cfg = settings(
        [upstream_backend("site", "http://127.0.0.1:9", "ok")],
        [{"name": "site", "backends": ["site"]}],
        ledger={"url": f"sqlite:///{ledger_path}"},
        data_dir=str(tmp_path),
    )
    with serve_gateway(cfg) as url:
        r = httpx.get(url + "/admin/report", params={"since": "60d"}, timeout=30)
    assert r.status_code == 200, r.text
    hot = r.json()["hot_paths"]
    assert [h["shape"] for h in hot[:3]] == [
        "turn on pump {n}",
        "turn off pump {n}",
        "what are the opening hours?",
    ]
    assert [h["requests"] for h in hot[:3]] == [PUMP_ON, PUMP_OFF, HOURS]
    assert hot[0]["cost_usd"] == pytest.approx(PUMP_ON * CLOUD_PRICE)


def test_layer0_answers_are_not_hot_paths_again(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    rng = random.Random(2)
    with Ledger(
        open_store(f"sqlite:///{path}", tmp_path), store_prompts=True, spill_path=tmp_path / "s"
    ) as ledger:
        for i in range(30):
            r = _rec(i, time.time() - 30 * DAY, rng, f"Turn on pump {i}", "done")
            r.tier = ("rules", "cache", "cloud")[i % 3]
            ledger.record(r)
        assert ledger.flush(30)
    hp = run_hot_paths(path)
    assert hp.scanned == 10 and hp.clusters[0].requests == 10
    assert hp.clusters[0].tiers == {"cloud": 10}


def test_bad_since_is_one_line_exit_2(tmp_path: Path) -> None:
    out = CliRunner().invoke(cli_app, ["hotpaths", "--since", "soon"])
    assert out.exit_code == 2 and "expected a span" in out.output


def test_wordllama_embedder_keeps_on_and_off_apart(ledger_path: Path) -> None:
    pytest.importorskip("wordllama")
    store = open_store(f"sqlite:///{ledger_path}", ledger_path.parent)
    with store.transaction("read") as tx:
        hp = hot_paths(tx, load_embedder("wordllama"), start=0.0, end=time.time() + 1)
    store.close()
    shapes = {c.shape: c.requests for c in hp.clusters}
    assert shapes["turn on pump {n}"] == PUMP_ON and shapes["turn off pump {n}"] == PUMP_OFF
