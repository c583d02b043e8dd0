"""``tierlm judge``: score answers as the probability that each is good enough.

Input, one JSON object per line (``--jsonl FILE``, ``-`` for stdin)::

    {"prompt": str} or {"messages": [...]}, plus "answer": str, and optionally
    "logprobs" (numbers, [{"logprob": x}, ...] or OpenAI's {"content": [...]}),
    "others" (other cheap answers to the same request), "finish_reason",
    "response_format", "tools", "tool_calls"

Output, one line per input line, in order: ``{"score": float in [0, 1], "accept": bool,
"reasons": [str]}``. A line that cannot be judged gives ``{"line": n, "error": str}`` in its
place, the same message on stderr, and exit status 2 once all lines are done.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

import typer

from tierlm.cli.common import open_text

if TYPE_CHECKING:
    from tierlm.judge import Case, Judge


def register(app: typer.Typer) -> None:
    app.command()(judge)


def judge(
    jsonl: str = typer.Option(
        ...,
        "--jsonl",
        help='Judge each line of FILE (\'-\' = stdin): {"prompt"|"messages", "answer", ...}.',
    ),
    threshold: float | None = typer.Option(
        None, "--threshold", min=0.0, max=1.0, help="Accept at or above this score."
    ),
) -> None:
    """Score answers: the probability that each is good enough, and why."""
    from tierlm.judge import Judge

    bad = _judge_lines(Judge(threshold=threshold), open_text(jsonl), sys.stdout)
    if bad:
        raise typer.Exit(2)


def _judge_lines(j: Judge, stream: TextIO, out: TextIO) -> int:
    from pydantic import ValidationError

    bad = 0
    for n, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            result: dict[str, Any] = j.judge(parse_case(json.loads(line))).to_dict()
        except (ValueError, ValidationError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            result = {"line": n, "error": msg}
            typer.echo(f"error: line {n}: {msg}", err=True)
            bad += 1
        out.write(json.dumps(result, ensure_ascii=False) + "\n")
    out.flush()
    return bad


def parse_case(obj: object) -> Case:
    """One input line as a judge case; ``ValueError`` says what is wrong with it."""
    from tierlm.judge import case_for
    from tierlm.types import ChatRequest

    if not isinstance(obj, dict):
        raise ValueError("each line must be a JSON object")
    answer = obj.get("answer")
    if not isinstance(answer, str):
        raise ValueError('each line needs "answer" (a string)')
    if "messages" in obj:
        request = ChatRequest(messages=obj["messages"], tools=obj.get("tools"))
    elif isinstance(obj.get("prompt"), str):
        request = ChatRequest.from_prompt(obj["prompt"], tools=obj.get("tools"))
    else:
        raise ValueError('each line needs "prompt" (a string) or "messages" (a list)')
    if isinstance(obj.get("response_format"), dict):
        request.extra["response_format"] = obj["response_format"]
    others = obj.get("others", [])
    if not isinstance(others, list) or not all(isinstance(o, str) for o in others):
        raise ValueError('"others" must be a list of strings')
    calls = obj.get("tool_calls")
    if calls is not None and not (
        isinstance(calls, list) and all(isinstance(c, dict) for c in calls)
    ):
        raise ValueError('"tool_calls" must be a list of objects')
    return case_for(
        request,
        answer,
        others=others,
        logprobs=parse_logprobs(obj.get("logprobs")),
        finish_reason=obj.get("finish_reason")
        if isinstance(obj.get("finish_reason"), str)
        else None,
        tool_calls=calls,
    )


def parse_logprobs(raw: object) -> list[float] | None:
    """Token log-probs from numbers, ``[{"logprob": x}]`` or ``{"content": [...]}``."""
    if raw is None:
        return None
    items = raw.get("content") if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise ValueError('"logprobs" must be a list of numbers or of {"logprob": number}')
    out: list[float] = []
    for item in items:
        value = item.get("logprob") if isinstance(item, dict) else item
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError('"logprobs" must be a list of numbers or of {"logprob": number}')
        out.append(float(value))
    return out
