"""The judge on fixed inputs: each check fires on a bad answer and stays quiet on a good one;
agreement, log-probs and the `tierlm judge --jsonl` interface."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tierlm.judge import Case, Judge, checks
from tierlm.judge.agreement import agreement, choice_of

TIERLM = str(Path(sys.executable).with_name("tierlm"))
MC = 'Which way?\nA) west\nB) east\nC) north\nPrint only a single choice from "A" or "B" or "C".'


@pytest.fixture(scope="module")
def judge() -> Judge:
    return Judge()


def score(judge: Judge, question: str, answer: str, **kw: object) -> float:
    return judge.judge(Case(question=question, answer=answer, **kw)).score  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("question", "bad", "good", "reason"),
    [
        (
            "How do I reset the PLC?",
            "I'm sorry, but I can't help with that.",
            "Hold the reset button for five seconds, then power-cycle the PLC.",
            "refuses",
        ),
        ("List the steps.", "", "1. Open the valve. 2. Start the pump.", "empty"),
        (
            "What is 17 * 23?",
            "17 * 23 = 381, so the answer is 381.",
            "17 * 23 = 391, so the answer is 391.",
            "calculations",
        ),
        (
            "Return the pump status as JSON.",
            "Status: running, pressure 4 bar",
            '{"status": "running", "pressure_bar": 4}',
            "not JSON",
        ),
        (
            "Write a Python function that adds two numbers.",
            "```python\ndef add(a, b)\n    return a + b\n```",
            "```python\ndef add(a, b):\n    return a + b\n```",
            "does not parse",
        ),
        (
            "Write a Python function that adds two numbers.",
            "```javascript\nfunction add(a, b) { return a + b; }\n```",
            "```python\ndef add(a, b):\n    return a + b\n```",
            "javascript",
        ),
        (
            "Wie hoch ist der Druck in der Leitung, wenn die Pumpe läuft? Bitte kurz erklären.",
            "The pressure in the line is about four bar when the pump is running normally.",
            "Der Druck in der Leitung ist etwa vier bar, wenn die Pumpe normal läuft.",
            "another language",
        ),
        (MC, "I would need more information.", "B", "no final answer"),
    ],
)
def test_each_check_lowers_the_score_and_says_why(
    judge: Judge, question: str, bad: str, good: str, reason: str
) -> None:
    v_bad = judge.judge(Case(question=question, answer=bad))
    v_good = judge.judge(Case(question=question, answer=good))
    assert any(reason in r for r in v_bad.reasons), v_bad.reasons
    assert not any(reason in r for r in v_good.reasons), v_good.reasons
    assert v_bad.score < v_good.score
    assert not v_bad.accept


def test_looping_and_truncation(judge: Judge) -> None:
    q = "Describe the start-up procedure of the boiler."
    loop = "Open the valve and check the gauge. " * 12
    assert checks.looping(loop) > 0.5
    assert score(judge, q, loop) < score(judge, q, loop[:60] + " Then light the burner.")
    cut = "Step one: open the feed valve and wait for the pressure to"
    assert score(judge, q, cut, finish_reason="length") < score(judge, q, cut, finish_reason="stop")
    assert checks.truncated("```python\nx = 1\n", None) == 1.0


def test_schema_and_tool_arguments() -> None:
    schema = {
        "type": "object",
        "required": ["pump", "on"],
        "properties": {"pump": {"type": "integer"}, "on": {"type": "boolean"}},
    }
    rf = {"type": "json_schema", "json_schema": {"schema": schema}}
    assert checks.json_problem("", '{"pump": 3, "on": true}', rf, None, None) is None
    assert "missing" in str(checks.json_problem("", '{"pump": 3}', rf, None, None))
    assert "is not integer" in str(
        checks.json_problem("", '{"pump": "3", "on": true}', rf, None, None)
    )
    tools = [{"type": "function", "function": {"name": "switch", "parameters": schema}}]
    ok = [{"function": {"name": "switch", "arguments": '{"pump": 3, "on": true}'}}]
    bad = [{"function": {"name": "switch", "arguments": '{"pump": 3'}}]
    other = [{"function": {"name": "reboot", "arguments": "{}"}}]
    assert checks.json_problem("", "", None, tools, ok) is None
    assert "not JSON" in str(checks.json_problem("", "", None, tools, bad))
    assert "undeclared" in str(checks.json_problem("", "", None, tools, other))


def test_agreement_extracts_choices_and_numbers() -> None:
    assert [
        choice_of(a, MC) for a in ("B\n", "(C) north", "The answer is A.", "east", "A boat")
    ] == ["B", "C", "A", "B", None]
    assert agreement("B", ["B\n", "C"], MC) == (0.5, "choice")
    assert agreement("42", ["42.0", "41"], "How many pumps?") == (0.5, "number")
    assert agreement("x", [], MC) == (None, "none")


def test_agreement_among_cheap_answers_moves_the_score(judge: Judge) -> None:
    agree = score(judge, MC, "B", others=["B", "B"])
    alone = score(judge, MC, "B")
    disagree = score(judge, MC, "B", others=["A", "C"])
    assert agree > alone > disagree
    assert judge.judge(Case(question=MC, answer="B", others=["A", "C"])).accept is False


def test_logprobs_move_the_score(judge: Judge) -> None:
    q, a = "Which valve feeds line 2?", "Valve V-12 feeds line 2."
    sure = score(judge, q, a, logprobs=[-0.05, -0.1, -0.02])
    unsure = score(judge, q, a, logprobs=[-2.5, -1.9, -3.0])
    assert sure > score(judge, q, a) > unsure


def test_the_cli_judges_lines_in_order_and_names_bad_lines() -> None:
    lines = [
        {"prompt": "What is 6 * 7?", "answer": "6 * 7 = 42"},
        "not json",
        {
            "messages": [{"role": "user", "content": MC}],
            "answer": "B",
            "others": ["B", "B"],
            "logprobs": {"content": [{"token": "B", "logprob": -0.01}]},
        },
        {"prompt": "hi"},
        {"prompt": "What is 6 * 7?", "answer": "6 * 7 = 48"},
    ]
    stdin = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    r = subprocess.run(
        [TIERLM, "judge", "--jsonl", "-"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(out) == 5
    assert out[1]["line"] == 2 and "error" in out[1]
    assert out[3] == {"line": 4, "error": 'each line needs "answer" (a string)'}
    assert "line 2:" in r.stderr and "line 4:" in r.stderr and "Traceback" not in r.stderr
    for o in (out[0], out[2], out[4]):
        assert 0.0 <= o["score"] <= 1.0 and isinstance(o["accept"], bool)
        assert isinstance(o["reasons"], list)
    assert out[2]["accept"] and not out[4]["accept"]
    assert out[0]["score"] > out[4]["score"]
