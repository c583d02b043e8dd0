"""A finished batch's output and error files (OpenAI's format), and its final status.

The output file has one line per request answered with a 200, the error file one per other
line, each in input order: ``{"id", "custom_id", "response": {"status_code", "request_id",
"body"}, "error": null}``, or for a line never run ``{"response": null, "error": {"code":
"batch_expired" | "batch_cancelled", "message"}}``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

_UNRUN = {
    "expired": (
        "batch_expired",
        "This request could not be executed before the completion window expired.",
    ),
    "cancelled": ("batch_cancelled", "This request was not executed: the batch was cancelled."),
}


def result_files(
    lines: list[tuple[str, str, str | None, int | None, str | None]],
) -> tuple[str, str]:
    """The output and error files' content (``""``: no line) from the lines in input order:
    (custom_id, state, request_id, status_code, response body JSON)."""
    out: list[str] = []
    err: list[str] = []
    for cid, state, rid, code, response in lines:
        line: dict[str, Any] = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": cid}
        if state in _UNRUN:
            code_name, message = _UNRUN[state]
            line.update(response=None, error={"code": code_name, "message": message})
        else:
            body = json.loads(response or "null")
            line.update(response={"status_code": code, "request_id": rid, "body": body}, error=None)
        (out if state == "done" else err).append(json.dumps(line, ensure_ascii=False))
    return ("\n".join(out) + "\n" if out else "", "\n".join(err) + "\n" if err else "")


def final_status(status: str, states: set[str]) -> tuple[str, str]:
    """A closing batch's status and the time column it stamps: ``cancelled`` (it was being
    cancelled), ``expired`` (some line expired) or ``completed``."""
    if status == "cancelling":
        return "cancelled", "cancelled_at"
    if "expired" in states:
        return "expired", "expired_at"
    return "completed", "completed_at"
