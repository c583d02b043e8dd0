"""The Batch API's input file: JSONL, one chat request per line.

Each line is ``{"custom_id": "...", "method": "POST", "url": "/v1/chat/completions",
"body": {...}}`` (OpenAI's format); ``body`` is a chat completion request as
``POST /v1/chat/completions`` takes it, without ``stream``. :func:`parse_lines` checks the
shape and refuses a bad file with a 400 naming the line (1-based): not UTF-8, not JSON, a
missing or repeated ``custom_id``, another method or URL, a key OpenAI does not define, more
than ``max_lines`` lines, or no line at all. What each ``body`` means is checked by the
gateway (the same parser as a live request's).
"""

from __future__ import annotations

import json
from typing import Any

from tierlm.errors import InvalidRequest

ENDPOINTS = ("/v1/chat/completions",)
_KEYS = {"custom_id", "method", "url", "body"}
MAX_CUSTOM_ID = 512


class LineError(InvalidRequest):
    """A bad line of an input file (``line``: 1-based)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.param = f"line {line}"


def parse_lines(data: bytes, max_lines: int) -> list[tuple[str, dict[str, Any]]]:
    """``(custom_id, body)`` per line, in order; :class:`LineError` for the first bad line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise LineError(line, "not UTF-8 text") from None
    out: list[tuple[str, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(out) >= max_lines:
            raise LineError(i, f"more than {max_lines} requests in one file")
        cid, body = _parse_line(i, raw)
        if cid in seen:
            raise LineError(i, f"custom_id {cid!r} repeats line {seen[cid]}")
        seen[cid] = i
        out.append((cid, body))
    if not out:
        raise InvalidRequest("the file has no request lines")
    return out


def _parse_line(i: int, raw: str) -> tuple[str, dict[str, Any]]:
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise LineError(i, f"not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise LineError(i, "must be a JSON object")
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise LineError(i, f"unknown key {unknown[0]!r}")
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid or len(cid) > MAX_CUSTOM_ID:
        raise LineError(i, f"custom_id must be a non-empty string (at most {MAX_CUSTOM_ID})")
    if obj.get("method", "POST") != "POST":
        raise LineError(i, "method must be POST")
    if obj.get("url") not in ENDPOINTS:
        raise LineError(i, f"url must be one of {', '.join(ENDPOINTS)}")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise LineError(i, "body must be a JSON object (a chat completion request)")
    if body.get("stream"):
        raise LineError(i, "body.stream: a batch line cannot stream")
    return cid, body
