"""A local server implementing Ollama's native API (``/api/chat``, ``/api/tags``, ``/api/ps``,
``/api/version``), as documented in Ollama's ``docs/api.md``.

- ``/api/chat``: ``stream`` defaults to true; a stream is NDJSON, one
  ``{"model", "created_at", "message": {"role", "content"}, "done": false}`` per piece and a
  last object with ``done: true``, ``done_reason`` and the counters (``prompt_eval_count``,
  ``eval_count``, durations). Tool calls come as ``message.tool_calls`` with ``arguments``
  as an object. Errors are ``{"error": "..."}`` with a status (404 for a model not pulled,
  503 when busy), or an ``error`` line inside a stream.
- A chat loads its model; ``keep_alive`` 0 unloads it after the answer, so ``/api/ps``
  shows what a real server would.

The "model" echoes ``You said: <last user text>`` one word per chunk, or calls the first
tool with ``{"city": "Paris"}`` when the user mentions the weather. Models named ``busy``,
``crash``, ``stream-error`` and ``stream-truncated`` misbehave as named.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

PULLED = [
    "smollm2:135m",
    "llama3.2:latest",
    "busy:latest",
    "crash:latest",
    "stream-error:latest",
    "stream-truncated:latest",
]
STAMP = "2025-01-01T00:00:00.000000Z"
DETAILS = {
    "format": "gguf",
    "family": "llama",
    "parameter_size": "135M",
    "quantization_level": "Q4_1",
    "parent_model": "",
    "families": ["llama"],
}


def _full(name: str) -> str:
    return name if ":" in name else name + ":latest"


def _answer(body: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]], str]:
    last = body["messages"][-1].get("content", "")
    tools = body.get("tools") or []
    if tools and "weather" in last.lower():
        name = tools[0]["function"]["name"]
        return [], [{"function": {"name": name, "arguments": {"city": "Paris"}}}], "stop"
    words = ("You said: " + last).split()
    limit = (body.get("options") or {}).get("num_predict")
    if isinstance(limit, int) and 0 < limit < len(words):
        return words[:limit], [], "length"
    return words, [], "stop"


def _final(model: str, n_in: int, n_out: int, reason: str) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": STAMP,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": reason,
        "total_duration": 1000,
        "load_duration": 10,
        "prompt_eval_count": n_in,
        "prompt_eval_duration": 100,
        "eval_count": n_out,
        "eval_duration": 800,
    }


def _lines(body: dict[str, Any], model: str, n_in: int) -> Iterator[str]:
    words, calls, reason = _answer(body)
    for i, w in enumerate(words):
        piece = w if i == 0 else " " + w
        yield (
            json.dumps(
                {
                    "model": model,
                    "created_at": STAMP,
                    "message": {"role": "assistant", "content": piece},
                    "done": False,
                }
            )
            + "\n"
        )
        if i == 1 and model.startswith("stream-error"):
            yield json.dumps({"error": "an error was encountered while running the model"}) + "\n"
            return
    if calls:
        yield (
            json.dumps(
                {
                    "model": model,
                    "created_at": STAMP,
                    "message": {"role": "assistant", "content": "", "tool_calls": calls},
                    "done": False,
                }
            )
            + "\n"
        )
    if model.startswith("stream-truncated"):
        return
    yield json.dumps(_final(model, n_in, len(words) or 5, reason)) + "\n"


async def chat(request: Request) -> Response:
    raw = await request.body()
    request.app.state.raw.append(raw)
    try:
        body = json.loads(raw)
    except ValueError:
        return JSONResponse({"error": "invalid character in request body"}, status_code=400)
    request.app.state.requests.append(body)
    model = _full(str(body.get("model") or ""))
    if not body.get("model"):
        return JSONResponse({"error": "model is required"}, status_code=400)
    if model not in PULLED:
        return JSONResponse(
            {"error": f'model "{body["model"]}" not found, try pulling it first'}, status_code=404
        )
    if model == "busy:latest":
        return JSONResponse(
            {"error": "server busy, please try again.  maximum pending requests exceeded"},
            status_code=503,
        )
    if model == "crash:latest":
        return JSONResponse(
            {"error": "llama runner process has terminated: exit status 2"}, status_code=500
        )
    loaded: dict[str, Any] = request.app.state.loaded
    if body.get("keep_alive") in (0, "0", "0s"):
        loaded.pop(model, None)
    else:
        loaded[model] = body.get("keep_alive", "5m")
    n_in = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])
    if body.get("stream", True):
        return StreamingResponse(_lines(body, model, n_in), media_type="application/x-ndjson")
    words, calls, reason = _answer(body)
    msg: dict[str, Any] = {"role": "assistant", "content": " ".join(words)}
    if calls:
        msg["tool_calls"] = calls
    out = _final(model, n_in, len(words) or 5, reason)
    out["message"] = msg
    return JSONResponse(out)


async def tags(request: Request) -> Response:
    return JSONResponse(
        {
            "models": [
                {
                    "name": m,
                    "model": m,
                    "modified_at": STAMP,
                    "size": 100_000_000 + i,
                    "digest": f"{i:064x}",
                    "details": DETAILS,
                }
                for i, m in enumerate(PULLED)
            ]
        }
    )


async def ps(request: Request) -> Response:
    return JSONResponse(
        {
            "models": [
                {
                    "name": m,
                    "model": m,
                    "size": 300_000_000,
                    "digest": "0" * 64,
                    "details": DETAILS,
                    "expires_at": "2099-01-01T00:00:00Z",
                    "size_vram": 0,
                    "context_length": 4096,
                }
                for m in request.app.state.loaded
            ]
        }
    )


async def version(request: Request) -> Response:
    return JSONResponse({"version": "0.12.0"})


def make_app() -> Starlette:
    app = Starlette(
        routes=[
            Route("/api/chat", chat, methods=["POST"]),
            Route("/api/tags", tags),
            Route("/api/ps", ps),
            Route("/api/version", version),
        ]
    )
    app.state.requests = []
    app.state.raw = []  # the exact request bodies, in order
    app.state.loaded = {"smollm2:135m": "5m"}
    return app
