"""Starlette endpoints over a ledger: ``POST /v1/feedback`` and ``GET /admin/report``.

The gateway mounts them (and puts its auth in front); bad input answers with OpenAI-shaped
error JSON (``TierlmError.to_openai()``) and the error's status.

``POST /v1/feedback``: ``{"request_id": "...", "score": 0.0-1.0, "thumbs": "up"|"down",
"text": "..."}`` (score or thumbs required) answers ``{"ok": true, "request_id": ...}``. The
text is stored redacted (as stored prompts are); the key the gateway identified (in
``request.state.api_key``) may score only its own requests, an admin key any.
``GET /admin/report?since=30d`` answers the report's JSON.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tierlm.errors import InvalidRequest, TierlmError
from tierlm.ledger.core import Ledger

Endpoint = Callable[[Request], Awaitable[Response]]
MAX_BODY = 64 * 1024


def _error(e: TierlmError) -> JSONResponse:
    return JSONResponse(e.to_openai(), status_code=e.status)


def _parse_feedback(body: bytes) -> tuple[str, float | None, Any, str | None]:
    if len(body) > MAX_BODY:
        raise InvalidRequest(f"feedback body over {MAX_BODY} bytes")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("body must be a JSON object")
    rid = data.get("request_id")
    if not isinstance(rid, str) or not rid:
        raise InvalidRequest("request_id (string) is required")
    score = data.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
        raise InvalidRequest("score must be a number between 0 and 1")
    text = data.get("text")
    if text is not None and not isinstance(text, str):
        raise InvalidRequest("text must be a string")
    return rid, None if score is None else float(score), data.get("thumbs"), text


def feedback_endpoint(ledger: Ledger, redact: Callable[[str], str]) -> Endpoint:
    """``POST /v1/feedback``: store a score and/or thumbs (and a ``redact``-ed note) for one
    request."""

    async def feedback(request: Request) -> Response:
        key = getattr(request.state, "api_key", None)
        scorer = key.name if key is not None and not key.admin else None
        try:
            rid, score, thumbs, text = _parse_feedback(await request.body())
            note = await asyncio.to_thread(redact, text) if text else text
            await ledger.aadd_feedback(rid, score, thumbs, note, scorer)
        except TierlmError as e:
            return _error(e)
        return JSONResponse({"ok": True, "request_id": rid})

    return feedback


async def report_json(ledger: Ledger, since: str) -> dict[str, Any]:
    """The report over the last ``since`` (``30d``, ``12h``, ``all``) as JSON: the one source
    of ``/admin/report`` and the dashboard's numbers. :class:`InvalidRequest` for a bad span."""
    from tierlm.ledger.reports import parse_since

    try:
        span = parse_since(since)
    except ValueError as e:
        raise InvalidRequest(str(e)) from None
    return (await ledger.areport(span)).to_dict()


def report_endpoint(ledger: Ledger) -> Endpoint:
    """``GET /admin/report?since=30d``: the report as JSON."""

    async def report(request: Request) -> Response:
        try:
            body = await report_json(ledger, request.query_params.get("since", "30d"))
        except TierlmError as e:
            return _error(e)
        return JSONResponse(body)

    return report
