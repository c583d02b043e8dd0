"""The pre-answer score against a person's notion of hard: 105 plant and office requests
labelled simple / medium / hard, and simple lookups that stay on the tiny tier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tierlm import Router
from tierlm.signals.complexity import load_scorer
from tierlm.types import ChatRequest

LABELLED = Path(__file__).parent / "data" / "difficulty_prompts.jsonl"
ENV = {
    "TIERLM_SITE_URL": "http://127.0.0.1:9/v1",
    "TIERLM_SITE_MODEL": "llama-70b",
    "OPENAI_API_KEY": "sk-placeholder",
    "ANTHROPIC_API_KEY": "sk-ant-placeholder",
}


def _ranks(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    for v in np.unique(x):
        r[x == v] = r[x == v].mean()
    return r


def test_the_default_score_ranks_labelled_requests_like_a_person() -> None:
    rows = [json.loads(x) for x in LABELLED.read_text(encoding="utf-8").splitlines() if x]
    assert len(rows) == 105
    scorer = load_scorer("model")
    scores = np.asarray([scorer.score(ChatRequest.from_prompt(r["prompt"])) for r in rows])
    labels = np.asarray([r["label"] for r in rows], dtype=np.float64)
    rho = float(np.corrcoef(_ranks(scores), _ranks(labels))[0, 1])
    assert rho >= 0.75, rho
    means = [scores[labels == k].mean() for k in (1, 2, 3)]
    assert means[0] < means[1] < means[2], means


@pytest.mark.parametrize(
    "prompt", ["What is the capital of France?", "Who is the safety officer for building C?"]
)
def test_simple_lookups_stay_on_the_tiny_tier_under_full_stack(prompt: str) -> None:
    with Router.from_config(
        preset="full-stack", overrides={"ledger": {"url": "off"}}, env=ENV
    ) as router:
        plan = router.plan(ChatRequest.from_prompt(prompt))
    assert plan.candidates[0].tier == "tiny", (plan.complexity, plan.reasons)
