"""The complexity signal: the shipped artefact, the baselines, and the tiny-model rating."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import pytest

from conftest import ROUTING_DATA, SMOLLM2
from tierlm.errors import ConfigError
from tierlm.signals import complexity as cx
from tierlm.signals.complexity_features import (
    FEATURE_NAMES,
    HEAD_CHARS,
    TAIL_CHARS,
    lead_command,
    lexical_features,
)
from tierlm.types import ChatRequest, Message

REPO = Path(__file__).resolve().parents[1]


def req(*texts: str) -> ChatRequest:
    roles = ["user", "assistant"]
    return ChatRequest(
        messages=[Message(role=roles[i % 2], content=t) for i, t in enumerate(texts)]  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def model() -> cx.ComplexityScorer:
    return cx.load_scorer("model")


def test_required_behaviour(model: cx.ComplexityScorer) -> None:
    easy = model.score(req("Turn on pump 3"))
    hard = model.score(
        req("Design a predictive maintenance program for 40 pumps with staffing and a rollout plan")
    )
    assert easy < 0.25  # stays on the tiny tier (s=0.35) at the default quality bar
    assert hard > 0.6  # above the tiny tier, and above the middle
    assert model.name == "model"


@pytest.mark.parametrize(
    ("easier", "harder"),
    [
        ("Hello!", "Explain why the compressor trips when inlet pressure drops, step by step."),
        ("Close valve 12", "Write a detailed rollout plan and budget for a new SCADA system."),
        ("Stop the conveyor", "Develop a strategy to cut energy use by 20% across three plants."),
    ],
)
def test_orders_commands_below_open_briefs(
    model: cx.ComplexityScorer, easier: str, harder: str
) -> None:
    assert model.score(req(easier)) < 0.35 < model.score(req(harder))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Turn on pump 3", True),
        ("Please set the valve to 20%", True),
        ("Hello, turn on pump 3", True),
        ("Hi", True),
        ("Thanks!", True),
        ("Hi, can you explain how the game of kickball works?", False),
        ("Hello there, I'd like a recipe for tahini.", False),
        ("What is the status of pump 3?", False),
    ],
)
def test_lead_command_looks_past_courtesy(text: str, expected: bool) -> None:
    assert lead_command(text) is expected


def test_a_greeting_does_not_make_a_question_easy(model: cx.ComplexityScorer) -> None:
    question = "Can you explain how the game of kickball works and what the rules are?"
    greeted = model.score(req("Hi, " + question))
    assert greeted == pytest.approx(model.score(req(question)), abs=0.1)
    assert greeted > model.score(req("Hi")) + 0.2


def test_word_length_spread_feature() -> None:
    sd = FEATURE_NAMES.index("sd_word_len")
    assert lexical_features("cat dog cow")[sd] == pytest.approx(0.0)
    assert lexical_features("a cat electrocardiogram")[sd] == pytest.approx(
        statistics.pstdev([1, 3, len("electrocardiogram")])
    )


def test_scores_are_probabilities_on_odd_inputs(model: cx.ComplexityScorer) -> None:
    odd = ["", " ", "?", "1" * 5000, "ü" * 300, "```python\nprint(1)\n```", "A) x\nB) y\n" * 50]
    for text in odd:
        s = model.score(req(text))
        assert 0.0 <= s <= 1.0
    parts = ChatRequest(
        messages=[Message(role="user", content=[{"type": "text", "text": "Turn on pump 3"}])]
    )
    assert model.score(parts) == pytest.approx(model.score(req("Turn on pump 3")))


def test_uses_the_whole_conversation(model: cx.ComplexityScorer) -> None:
    follow_up = "What about the second part?"
    brief = "Design a predictive maintenance program for 40 pumps with staffing and a rollout plan"
    alone = model.score(req(follow_up))
    in_context = model.score(req(brief, "Here is part one: " + "inspect weekly. " * 20, follow_up))
    assert in_context > alone + 0.05


def test_huge_prompts_cost_a_bounded_window(model: cx.ComplexityScorer) -> None:
    small = req("word " * ((HEAD_CHARS + TAIL_CHARS) // 5))
    huge = req("word " * 2_000_000)  # 10 MB of text
    model.score(huge)

    def best(r: ChatRequest) -> float:
        times = []
        for _ in range(20):
            t = time.perf_counter()
            model.score(r)
            times.append(time.perf_counter() - t)
        return min(times)

    # only the total length is O(n): no more than a few times the cost of a window's worth
    assert best(huge) < 10 * best(small) + 0.002
    assert model.score(huge) > model.score(small)  # the total length still counts


def test_length_baseline_is_monotone() -> None:
    s = cx.load_scorer("length")
    scores = [s.score(req("x" * n)) for n in (1, 30, 250, 2000, 20000)]
    assert scores == sorted(scores)
    assert scores[2] == pytest.approx(0.5, abs=0.01)
    assert s.name == "length"


@pytest.mark.parametrize(
    ("answer", "rating"),
    [
        ("1", 1),
        (" 3.", 3),
        ("Rating: 2", 2),
        ("I'd say 2 out of 3", 2),
        ("The request is simple", 1),
        ("This is hard", 3),
        ("12", None),
        ("", None),
    ],
)
def test_parse_rating(answer: str, rating: int | None) -> None:
    assert cx.parse_rating(answer) == rating


def test_llm_method_asks_with_the_whole_conversation() -> None:
    seen: list[list[dict[str, str]]] = []
    answers = iter(["1", "3", "no idea"])

    def rate(messages: list[dict[str, str]]) -> str:
        seen.append(messages)
        return next(answers)

    s = cx.load_scorer("llm", llm_rate=rate)
    assert s.score(req("first turn about pumps", "ok", "Turn on pump 3")) == 0.15
    assert s.score(req("Prove Fermat's last theorem")) == 0.85
    assert s.score(req("hmm")) == 0.5
    assert seen[0][0]["role"] == "system" and "1, 2 or 3" in seen[0][1]["content"]
    assert "first turn about pumps" in seen[0][1]["content"]
    assert "Turn on pump 3" in seen[0][1]["content"]


def test_load_scorer_errors() -> None:
    with pytest.raises(ConfigError, match="unknown complexity method"):
        cx.load_scorer("magic")
    with pytest.raises(ConfigError, match="needs a local model"):
        cx.load_scorer("llm")


def test_artefact_is_small_and_matches_the_features() -> None:
    assert cx.ARTEFACT.stat().st_size < 10_000_000
    params = json.loads(cx.ARTEFACT.read_text())
    assert params["feature_names"] == list(FEATURE_NAMES)
    assert len(params["coef"]) == len(FEATURE_NAMES)
    assert params["meta"]["trained_by"] == "train/train_complexity.py"


@pytest.mark.slow
def test_training_reproduces_the_shipped_artefact(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    if not (ROUTING_DATA / "routerbench").exists():
        pytest.skip("shared routing data not found")
    sys.path.insert(0, str(REPO))
    try:
        from train import train_complexity as tc
    finally:
        sys.path.remove(str(REPO))
    out = tmp_path / "complexity.json"
    assert tc.main(["--data", str(ROUTING_DATA), "--out", str(out)]) == 0
    fresh, shipped = json.loads(out.read_text()), json.loads(cx.ARTEFACT.read_text())
    assert fresh["coef"] == pytest.approx(shipped["coef"], rel=1e-6, abs=1e-9)
    assert fresh["intercept"] == pytest.approx(shipped["intercept"], rel=1e-6)
    # the shipped scorer and the training code score identically
    texts = ["Turn on pump 3", "Write a function to find the intersection of two arrays."]
    runtime = cx.ModelScorer(fresh)
    trained = tc.score(fresh, tc.features(texts))
    for text, expected in zip(texts, trained, strict=True):
        assert runtime.score(req(text)) == pytest.approx(expected, rel=1e-9)
    # the model beats the prompt-length baseline on tasks it never saw
    loto = fresh["meta"]["evaluation"]["leave_one_task_out_mean_apgr"]
    assert loto["model"] > loto["length"] + 0.02
    for task, row in fresh["meta"]["evaluation"]["leave_one_task_out"].items():
        assert row["model"]["apgr"] > row["length"]["apgr"] - 0.02, task


@pytest.mark.slow
def test_llm_method_with_the_real_tiny_model() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    if not SMOLLM2.exists():
        pytest.skip(f"{SMOLLM2} not found")
    llm = llama_cpp.Llama(model_path=str(SMOLLM2), n_ctx=2048, verbose=False)

    answers: list[str] = []

    def rate(messages: list[dict[str, str]]) -> str:
        out = llm.create_chat_completion(messages=messages, max_tokens=4, temperature=0.0)
        answers.append(str(out["choices"][0]["message"]["content"] or ""))
        return answers[-1]

    s = cx.load_scorer("llm", llm_rate=rate)
    for prompt in ("Turn on pump 3", "Prove that sqrt(2) is irrational."):
        score = s.score(req(prompt))
        rating = cx.parse_rating(answers[-1])
        # the real model gives a rating the parser reads (not the "undecided" fallback)
        assert rating is not None, answers[-1]
        assert score == cx.RATING_SCORES[rating]


def test_conversation_window_keeps_the_start_and_the_latest_text() -> None:
    from tierlm.signals.complexity_features import conversation_text

    msgs = [("system", "SYSTEM " + "s" * 5000), ("user", "u" * 5000), ("user", "y" * 900 + " END")]
    text, total = conversation_text(msgs)
    assert total == sum(len(t) for _, t in msgs)
    assert text.startswith("SYSTEM ")
    assert text.endswith(" END")
    assert len(text) <= HEAD_CHARS + TAIL_CHARS + len(msgs) + 1
    short = [("user", "hi"), ("assistant", "hello")]
    assert conversation_text(short) == ("hi\nhello", 7)
