"""Text checks of one answer: each returns a measured value and, when it fires, a reason.

Every check is a pure function of the request text and the answer (plus what the caller
knows: ``finish_reason``, the request's ``response_format`` and tools). None runs the answer:
code is parsed, never executed, and arithmetic is evaluated by a small arithmetic-only
evaluator over numbers and ``+ - * / ^ ( )``.

Checks:

- ``refusal``: "I can't help with that", "As an AI language model ...".
- ``hedging``: "I'm not sure", "possibly", "it depends" (count, capped at 3, scaled to 1).
- ``empty``: no visible text and no tool call.
- ``looping``: share of repeated word 4-grams in a long answer.
- ``truncated``: cut at ``max_tokens`` (``finish_reason == "length"``) or an unclosed fence.
- ``bad_json``: JSON was asked for (``response_format`` or the wording) and the answer is not
  JSON, or does not satisfy the schema; tool-call arguments that are not JSON or miss a
  required parameter.
- ``wrong_language``: the request is in one language (stopword profile of en, de, fr, es, it,
  nl, pt) and the answer confidently in another, unless the request asks for a translation.
- ``no_final_answer``: the request asks for one choice / a number and the answer has none.
- ``bad_arithmetic``: share of ``expression = number`` statements in the answer that are false.
- ``code_invalid``: a Python block that does not parse, no code where code was asked for, or
  code in another language than the one asked for (Python by default).
- ``off_topic``: share of the question's content words absent from the answer (only for
  answers long enough to be expected to echo them).
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tierlm.judge.agreement import choice_of, is_multiple_choice, last_number
from tierlm.signals.language import language

_REFUSAL = re.compile(
    r"\b(i(?:'m| am) (?:sorry|afraid),? (?:but )?i (?:can(?:no|')t|am unable|won't)"
    r"|i (?:cannot|can't|can not|won't|am unable to|am not able to) "
    r"(?:help|assist|provide|answer|comply|do that|fulfil|fulfill)"
    r"|as an ai(?: language model)?\b|i don't have access to"
    r"|ich kann (?:dir |ihnen )?(?:dabei )?nicht helfen|je ne peux pas)",
    re.I,
)
_HEDGE = re.compile(
    r"\b(i(?:'m| am) not (?:sure|certain)|i don't know|not sure|it (?:depends|is unclear)"
    r"|possibly|perhaps|might be|may be|it seems|i think|i believe|probably|hard to say"
    r"|cannot be determined|no way to know)\b",
    re.I,
)
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)
_FENCE = re.compile(r"```([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_TRANSLATE = re.compile(
    r"\b(translat\w*|übersetz\w*|tradu\w*|vertaal\w*|in (english|german|french|spanish|italian"
    r"|dutch|portuguese)|auf (deutsch|englisch)|en (français|anglais|español|inglés))\b",
    re.I,
)
_ASKS_JSON = re.compile(
    r"\b(?:as|in|return|respond|reply|output|format|give|only|valid)\b[^.\n]{0,40}\bjson\b", re.I
)
_ASKS_CODE = re.compile(
    r"\b(write|implement|create|code|fix|refactor)\b[^.\n]{0,60}"
    r"\b(function|script|program|class|method|code|snippet)\b",
    re.I,
)
_PY_LINE = re.compile(r"^\s*(def|class|import|from|return|for|while|print)\b", re.M)
_CODE_LANGS = (
    "python",
    "javascript",
    "typescript",
    "java",
    "c++",
    "c#",
    "rust",
    "go",
    "sql",
    "bash",
    "ruby",
    "php",
)
_ASKS_NUMBER = re.compile(
    r"\b(how (?:many|much|long|far)|calculate|compute|what is the (?:sum|total|product|result)"
    r"|final answer|solve)\b",
    re.I,
)
_CONTENT_STOP_WORDS = (
    "the a an and or of to in on for with what which who whom how why when where is are was "
    "were be been do does did can could should would will shall may might this that these those "
    "it its i you he she we they me my your our their from by at as about into than then there "
    "please write give tell explain describe list make find show use using answer question"
)
_CONTENT_STOP = frozenset(_CONTENT_STOP_WORDS.split())


def refusal(answer: str) -> float:
    return 1.0 if _REFUSAL.search(answer[:600]) else 0.0


def hedging(answer: str) -> float:
    return min(len(_HEDGE.findall(answer)), 3) / 3.0


def looping(answer: str) -> float:
    """Share of word 4-grams that repeat an earlier one (0 for answers under 24 words)."""
    words = [w.lower() for w in _WORD.findall(answer)]
    if len(words) < 24:
        return 0.0
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    return 1.0 - len(set(grams)) / len(grams)


def truncated(answer: str, finish_reason: str | None) -> float:
    if finish_reason == "length":
        return 1.0
    return 1.0 if answer.count("```") % 2 == 1 else 0.0


def wrong_language(question: str, answer: str) -> float:
    if _TRANSLATE.search(question):
        return 0.0
    asked, got = language(question), language(answer)
    return 1.0 if asked and got and asked != got else 0.0


# -- JSON and tool arguments -----------------------------------------------------------------

_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def schema_errors(value: Any, schema: Mapping[str, Any], path: str = "$") -> list[str]:
    """A small JSON-Schema subset: ``type``, ``enum``, ``required``, ``properties``, ``items``."""
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if isinstance(kind, str) else []
    if kinds and not any(_TYPES.get(k, lambda _: True)(value) for k in kinds):
        return [f"{path} is not {'/'.join(kinds)}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path} is not one of the allowed values"]
    errors: list[str] = []
    if isinstance(value, dict):
        errors += [f"{path}.{k} is missing" for k in schema.get("required", []) if k not in value]
        for k, sub in (schema.get("properties") or {}).items():
            if k in value and isinstance(sub, Mapping):
                errors += schema_errors(value[k], sub, f"{path}.{k}")
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value[:50]):
            errors += schema_errors(item, schema["items"], f"{path}[{i}]")
    return errors


def parse_json_answer(answer: str) -> Any:
    """The JSON value in an answer (bare, or in one fenced block); raises ValueError."""
    text = answer.strip()
    fence = _FENCE.search(text)
    if fence and not text.startswith(("{", "[")):
        text = fence.group(2).strip()
    return json.loads(text)


def json_problem(
    question: str,
    answer: str,
    response_format: Mapping[str, Any] | None,
    tools: Sequence[Mapping[str, Any]] | None,
    tool_calls: Sequence[Mapping[str, Any]] | None,
) -> str | None:
    """Why the answer's JSON (or tool arguments) is not what was asked for, or None."""
    if tool_calls:
        return _tool_problem(tools or [], tool_calls)
    rf_type = (response_format or {}).get("type")
    if rf_type not in ("json_object", "json_schema") and not _ASKS_JSON.search(question):
        return None
    try:
        value = parse_json_answer(answer)
    except ValueError as e:
        return f"JSON was asked for but the answer is not JSON ({str(e).split(':')[0]})"
    schema = ((response_format or {}).get("json_schema") or {}).get("schema")
    errs = schema_errors(value, schema) if isinstance(schema, Mapping) else []
    return f"the JSON does not match the schema: {errs[0]}" if errs else None


def _tool_problem(
    tools: Sequence[Mapping[str, Any]], calls: Sequence[Mapping[str, Any]]
) -> str | None:
    schemas = {
        (t.get("function") or {}).get("name"): (t.get("function") or {}).get("parameters") or {}
        for t in tools
    }
    for call in calls:
        fn = call.get("function") or {}
        name = fn.get("name")
        if schemas and name not in schemas:
            return f"tool call to an undeclared function {name!r}"
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except ValueError:
            return f"tool call {name!r} has arguments that are not JSON"
        errs = schema_errors(args, schemas.get(name) or {})
        if errs:
            return f"tool call {name!r}: {errs[0]}"
    return None


# -- final answers, arithmetic, code, topic ---------------------------------------------------


def no_final_answer(question: str, answer: str) -> float:
    if is_multiple_choice(question):
        return 0.0 if choice_of(answer, question) else 1.0
    if _ASKS_NUMBER.search(question):
        return 0.0 if last_number(answer) is not None else 1.0
    return 0.0


_EQUATION = re.compile(
    r"((?:[\d.,]+\s*[-+*/×x÷^]\s*)+[\d.,]+)\s*=\s*(-?[\d,]*\.?\d+)(?![\d.]*[-+*/])"
)
_OPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}


def _arith(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _arith(node.left), _arith(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 12:
            raise ValueError("exponent too large")
        return _OPS[type(node.op)](left, right)
    raise ValueError("not arithmetic")


def _number(text: str) -> str:
    """``1,234.5`` -> ``1234.5`` (thousands commas only)."""
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)


def arithmetic_errors(answer: str) -> tuple[int, int]:
    """(statements checked, statements false) among ``a op b ... = c`` in the answer."""
    checked = wrong = 0
    for m in _EQUATION.finditer(answer):
        expr = _number(m.group(1)).replace("×", "*").replace("÷", "/").replace("^", "**")
        expr = re.sub(r"(?<=\d)\s*x\s*(?=\d)", "*", expr)
        try:
            value = _arith(ast.parse(expr, mode="eval").body)
            claimed = float(_number(m.group(2)))
        except (ValueError, SyntaxError, ZeroDivisionError, OverflowError):
            continue
        checked += 1
        if not math.isclose(value, claimed, rel_tol=0.011, abs_tol=0.011):
            wrong += 1
    return checked, wrong


def code_problem(question: str, answer: str) -> str | None:
    """Why the answer's code fails where code was asked for, or None."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(answer)]
    asked = bool(_ASKS_CODE.search(question))
    if not blocks:
        if asked and not re.search(r"^\s*(def |class |import |function |SELECT )", answer, re.M):
            return "code was asked for but the answer has none"
        return None
    wanted = next(
        (lang for lang in _CODE_LANGS if re.search(rf"\b{re.escape(lang)}\b", question, re.I)),
        "python",
    )
    langs = {lang for lang, _ in blocks if lang}
    if (
        asked
        and langs
        and wanted not in langs
        and not ({"py", "python3"} & langs and wanted == "python")
    ):
        return f"code in {', '.join(sorted(langs))} where {wanted} was asked for"
    for lang, body in blocks:
        looks_python = wanted == "python" and _PY_LINE.search(body)  # not an output block
        if lang in ("python", "py", "python3", "pycon") or (not lang and looks_python):
            try:
                ast.parse(_python_source(body))
            except SyntaxError as e:
                return f"the Python code does not parse (line {e.lineno}: {e.msg})"
    return None


def _python_source(block: str) -> str:
    """The code of a block; of a REPL transcript (``>>>`` lines), only the typed lines."""
    lines = block.replace("\r\n", "\n").split("\n")
    if not any(line.startswith(">>>") for line in lines):
        return "\n".join(lines)
    typed = [line[4:] for line in lines if line.startswith((">>> ", "... ", ">>>", "..."))]
    return "\n".join(typed)


def content_words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if len(w) > 2} - _CONTENT_STOP


def off_topic(question: str, answer: str) -> float:
    """Share of the question's content words the answer leaves out (long answers only)."""
    if len(answer) < 80:
        return 0.0
    asked = content_words(question[-2000:])
    if len(asked) < 3:
        return 0.0
    return 1.0 - len(asked & content_words(answer)) / len(asked)
