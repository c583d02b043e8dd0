"""A recording OpenAI-wire upstream that bills like a provider, for the money tests.

Every call is billed in ``app.state.billed`` (one :class:`Bill` a call), whatever happens to
it: the prompt at one token per 4 characters of everything billable (message text and the
tool definitions), and one token per answer chunk actually generated, so a stream the client
abandons is billed up to the chunk it had generated. A chunk is 4 characters (``"t07 "``);
the gateway, which gets no usage from a cut stream, estimates its tokens from the text
(``estimate_tokens``): near this count, not equal to it.

The request's ``model`` picks the pace: ``metered`` answers at once; ``metered-slow`` waits
``SLOW_S`` between chunks. ``max_tokens`` chunks are generated (default ``DEFAULT_CHUNKS``,
at most ``MAX_CHUNKS``: a fuzzed ``max_tokens`` of 2**60 must not build a 2**60-token answer in
the test process).
Two more fail: ``metered-cut`` streams ``CUT_AFTER`` chunks (billed) and ends the body there,
without a finish reason or ``[DONE]`` (a connection that died mid-answer);
``metered-unavailable`` answers 503 (nothing generated, nothing billed).

The exact bytes of every request body are kept in ``app.state.bodies``, in order, so a test
can hash what really arrived.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

SLOW_S = 0.02
DEFAULT_CHUNKS = 40
MAX_CHUNKS = 4096
CUT_AFTER = 10


@dataclass
class Bill:
    prompt_tokens: int
    completion_tokens: int = 0
    finished: bool = False


def prompt_tokens(body: dict[str, Any]) -> int:
    text = "\n".join(
        m["content"] for m in body.get("messages", []) if isinstance(m.get("content"), str)
    )
    tools = json.dumps(body["tools"]) if body.get("tools") else ""
    return math.ceil((len(text) + len(tools)) / 4)


def _chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    data = {"id": "m", "object": "chat.completion.chunk", "created": 1, "model": "metered"}
    return "data: " + json.dumps({**data, "choices": [choice]}) + "\n\n"


async def _stream(bill: Bill, n: int, pause: float, cut: bool) -> AsyncIterator[str]:
    yield _chunk({"role": "assistant"})
    for i in range(min(n, CUT_AFTER) if cut else n):
        if pause:
            await asyncio.sleep(pause)
        bill.completion_tokens += 1
        yield _chunk({"content": f"t{i % 100:02d} "})
    if cut:
        return  # the body ends here: no finish reason, no usage, no [DONE]
    yield _chunk({}, "stop")
    usage = {"prompt_tokens": bill.prompt_tokens, "completion_tokens": bill.completion_tokens}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    data = {"id": "m", "object": "chat.completion.chunk", "created": 1, "model": "metered"}
    yield "data: " + json.dumps({**data, "choices": [], "usage": usage}) + "\n\n"
    bill.finished = True
    yield "data: [DONE]\n\n"


async def chat(request: Request) -> Response:
    raw = await request.body()
    body = json.loads(raw)
    with request.app.state.lock:
        request.app.state.bodies.append(raw)
    if body.get("model") == "metered-unavailable":
        error = {"message": "overloaded", "type": "server_error", "code": None}
        return JSONResponse({"error": error}, status_code=503)
    n = min(int(body.get("max_tokens") or DEFAULT_CHUNKS), MAX_CHUNKS)
    bill = Bill(prompt_tokens(body))
    with request.app.state.lock:
        request.app.state.billed.append(bill)
    pause = SLOW_S if body.get("model") == "metered-slow" else 0.0
    if body.get("stream"):
        cut = body.get("model") == "metered-cut"
        return StreamingResponse(_stream(bill, n, pause, cut), media_type="text/event-stream")
    bill.completion_tokens, bill.finished = n, True
    usage = {"prompt_tokens": bill.prompt_tokens, "completion_tokens": n}
    message = {"role": "assistant", "content": "".join(f"t{i % 100:02d} " for i in range(n))}
    return JSONResponse(
        {
            "id": "m",
            "object": "chat.completion",
            "created": 1,
            "model": "metered",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {**usage, "total_tokens": bill.prompt_tokens + n},
        }
    )


async def models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": "metered", "object": "model"}]})


def make_app() -> Starlette:
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models),
        ]
    )
    app.state.billed = []
    app.state.bodies = []
    app.state.lock = threading.Lock()
    return app


def billed_usd(bills: list[Bill], input_per_m: float, output_per_m: float) -> float:
    return (
        sum(b.prompt_tokens * input_per_m + b.completion_tokens * output_per_m for b in bills) / 1e6
    )
