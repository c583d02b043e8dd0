"""The task signal: tools, extraction, code, long context, and the token estimate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SMOLLM2
from tierlm.signals import TaskInfo, detect_task, estimate_tokens
from tierlm.types import ChatRequest, Message, ToolCall

DATA = Path(__file__).parent / "data" / "sensitivity_prompts.jsonl"
TOOL = {"type": "function", "function": {"name": "get_tag", "parameters": {"type": "object"}}}


def task(prompt: str, **kwargs: object) -> TaskInfo:
    return detect_task(ChatRequest.from_prompt(prompt, **kwargs))  # type: ignore[arg-type]


def test_plain_prose_is_nothing_special() -> None:
    info = task("Write a haiku about a cooling tower at dawn.")
    assert info == TaskInfo(False, False, False, False, info.tokens)
    assert 8 <= info.tokens <= 30
    assert info.to_dict() == {
        "tools": False,
        "extraction": False,
        "code": False,
        "long_context": False,
        "tokens": info.tokens,
        "vision": False,
    }


def test_tools_from_definitions_calls_and_results() -> None:
    assert task("What is tag FT-101 reading?", tools=[TOOL]).tools
    calls = ChatRequest(
        messages=[
            Message(role="user", content="read FT-101"),
            Message(
                role="assistant",
                tool_calls=[ToolCall(id="1", function={"name": "get_tag", "arguments": "{}"})],
            ),
            Message(role="tool", tool_call_id="1", content="12.4"),
        ]
    )
    assert detect_task(calls).tools
    assert not task("What is tag FT-101 reading?", tool_choice="none").tools


@pytest.mark.parametrize(
    "prompt",
    [
        "Extract the supplier, date and total from this invoice.",
        "List all part numbers from the text below.",
        "Return only valid JSON with fields name and qty.",
        "Convert the table into CSV.",
        "Bitte die Seriennummern aus dem Bericht auslesen.",
    ],
)
def test_extraction(prompt: str) -> None:
    assert task(prompt).extraction


def test_extraction_from_response_format() -> None:
    assert task("Hello", extra={"response_format": {"type": "json_object"}}).extraction
    assert not task("Summarise the shift report in three sentences.").extraction


@pytest.mark.parametrize(
    "prompt",
    [
        "```\nprint('hi')\n```",
        "Write a Python function that parses ISO dates.",
        "Traceback (most recent call last):\n  File 'x.py', line 3",
        "SELECT line, SUM(min) FROM stops GROUP BY line;",
        "for (int i = 0; i < n; i++) { a[i] = b[i] * (c[i] + d); }",
        "Write IEC 61131-3 structured text for a two-hand start.",
    ],
)
def test_code(prompt: str) -> None:
    assert task(prompt).code


def test_not_code() -> None:
    assert not task("Tank T-204 level 73.5 %, pressure 2.35 bar. Is that normal?").code


def test_long_context_threshold_and_token_count() -> None:
    prompt = "The conveyor stopped because the photo eye was dirty. " * 400
    request = ChatRequest.from_prompt(prompt)
    info = detect_task(request, long_context_tokens=1000)
    assert info.long_context and info.tokens > 1000
    assert not detect_task(request, long_context_tokens=100_000).long_context
    with_tools = detect_task(ChatRequest.from_prompt(prompt, tools=[TOOL]))
    assert with_tools.tokens > info.tokens  # tool definitions count


def test_estimate_tokens_basics() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("a") == 1
    short, long = estimate_tokens("pump " * 10), estimate_tokens("pump " * 1000)
    assert 90 * short <= long <= 110 * short  # linear in the text
    assert estimate_tokens("1234567890") > estimate_tokens("abcdefghij")
    assert estimate_tokens("Grüße aus Köln") > estimate_tokens("Grusse aus Koln")
    assert estimate_tokens("\udcff\x00 lone surrogate") > 0  # no UnicodeEncodeError


def test_estimate_tokens_against_smollm2_tokenizer() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(SMOLLM2), vocab_only=True, verbose=False)
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    # the texts the estimator was fitted on (the later multilingual rows are not)
    prompts = [r["prompt"] for r in rows if r["origin"] == "v1"]
    prompts.append(Path(__file__).read_text())
    errors = []
    for prompt in prompts:
        real = len(llm.tokenize(prompt.encode(), add_bos=False))
        errors.append(abs(estimate_tokens(prompt) - real) / real)
    mean = sum(errors) / len(errors)
    print(f"estimate_tokens vs SmolLM2: mean abs rel error {mean:.3f} max {max(errors):.3f}")
    assert mean < 0.15
    assert max(errors) < 0.5
