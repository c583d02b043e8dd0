"""Consensus (hint ``tierlm.consensus: k``): k answers in parallel from the plan's backends
(in-memory ``function`` backends with scripted answers), the majority returned with its
agreement, and a disagreement escalated to the next stronger tier or flagged."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tierlm import Router
from tierlm.backends.function import FunctionBackend, FunctionInfo
from tierlm.config import load_settings
from tierlm.types import ChatRequest

QUESTION = "Which way does the river flow?\nA) west\nB) east\nC) north\nAnswer with the letter."


def _says(text: str) -> Callable[[ChatRequest, FunctionInfo], str]:
    return lambda request, info: text


def _router(tmp_path: Path, answers: dict[str, str]) -> Router:
    backends: list[dict[str, Any]] = [
        {
            "name": name,
            "kind": "function",
            "function": _says(text),
            "model": name,
            "boundary": "site",
        }
        for name, text in answers.items()
    ]
    settings = load_settings(
        env={},
        overrides={
            "data_dir": str(tmp_path),
            "routing": {"complexity_method": "length"},
            "backends": backends,
            "tiers": [
                {"name": "small", "backends": [b["name"] for b in backends[:-1]], "strength": 0.5},
                {"name": "big", "backends": [backends[-1]["name"]], "strength": 1.0},
            ],
        },
    )
    return Router(settings)


def _calls(router: Router, *names: str) -> list[int]:
    """How many times each backend was asked."""
    backends = [router.backends[n] for n in names]
    assert all(isinstance(b, FunctionBackend) for b in backends)
    return [b.calls for b in backends if isinstance(b, FunctionBackend)]


def _attempts(tmp_path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        return db.execute(
            "SELECT backend, judge_score, judge_decision FROM attempts ORDER BY backend"
        ).fetchall()


def test_the_majority_wins_with_its_agreement(tmp_path: Path) -> None:
    answers = {"a": "B", "b": "B", "c": "C", "big": "B"}
    with _router(tmp_path, answers) as router:
        resp = router.chat(ChatRequest.from_prompt(QUESTION, hints={"consensus": 3}))
        router.accounting.ledger.flush()
    assert resp.text == "B" and resp.backend in ("a", "b")
    trail = {d["backend"]: d for d in resp.cascade or []}
    assert set(trail) == {"a", "b", "c"}
    assert trail["c"]["decision"] == "outvoted" and trail["c"]["score"] == 0.0
    assert trail[resp.backend]["decision"] == "majority" and trail[resp.backend]["score"] == 0.5
    assert _calls(router, "a", "b", "c", "big") == [1, 1, 1, 0]
    assert [r[2] for r in _attempts(tmp_path)] == [trail[n]["decision"] for n in "abc"]


def test_disagreement_escalates_to_a_stronger_tier(
    tmp_path: Path,
) -> None:
    answers = {"a": "A", "b": "B", "c": "C", "big": "B"}
    with _router(tmp_path, answers) as router:
        resp = router.chat(ChatRequest.from_prompt(QUESTION, hints={"consensus": 3}))
    assert resp.backend == "big" and resp.text == "B"
    assert [d["decision"] for d in resp.cascade or []] == ["escalate"] * 3
    assert _calls(router, "big") == [1]


def test_disagreement_without_a_stronger_tier_is_flagged(
    tmp_path: Path,
) -> None:
    answers = {"a": "A", "b": "B", "big": "C"}
    with _router(tmp_path, answers) as router:
        events = list(router.stream(ChatRequest.from_prompt(QUESTION, hints={"consensus": 3})))
        router.accounting.ledger.flush()
    assert [r[2] for r in _attempts(tmp_path)] == ["disagree"] * 3
    assert "".join(e.text for e in events) in ("A", "B", "C")
    assert events[-1].finish_reason == "stop"
    assert _calls(router, "a", "b", "big") == [1, 1, 1]
