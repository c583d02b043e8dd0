"""Helpers for the Batch API tests: a gateway whose app the test can reach (its scheduler's
clock), a counting upstream that can hold chosen requests, and JSONL input files."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fakes import serve
from tierlm.config.settings import Settings
from tierlm.server import create_app


class Clock:
    """A test clock: wall-clock seconds that move only when the test says so."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def jsonl(n: int, *, text: str = "line", model: str = "auto", **body: Any) -> bytes:
    """``n`` request lines ``req-0`` .. ``req-{n-1}``, each asking ``{text} {i}``."""
    rows = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": f"{text} {i}"}],
                **body,
            },
        }
        for i in range(n)
    ]
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


class Upstream:
    """An OpenAI-wire upstream that counts what it was asked (by last user message) and
    holds every request whose text contains ``hold_word`` until ``gate`` is set."""

    def __init__(self, hold_word: str = "HOLD") -> None:
        self.seen: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.gate = threading.Event()
        self.hold_word = hold_word
        self.lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/models", self.models),
            ]
        )

    def held(self) -> list[str]:
        with self.lock:
            return [t for t, n in self.in_flight.items() if n and self.hold_word in t]

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def chat(self, request: Request) -> Response:
        body = json.loads(await request.body())
        text = str(body["messages"][-1]["content"])
        with self.lock:
            self.seen[text] += 1
            self.in_flight[text] += 1
        if body.get("stream"):
            return StreamingResponse(self._sse(text, body["model"]), media_type="text/event-stream")
        try:
            await self._held(text)
        finally:
            with self.lock:
                self.in_flight[text] -= 1
        return JSONResponse(
            {
                "id": "chatcmpl-up",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"answer to {text}"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": dict(USAGE),
            }
        )

    async def _held(self, text: str) -> None:
        if self.hold_word in text:
            while not self.gate.is_set():  # noqa: ASYNC110 - another thread's event
                await asyncio.sleep(0.01)

    async def _sse(self, text: str, model: str) -> AsyncIterator[str]:
        """The answer as OpenAI SSE chunks; held after the first one."""

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            data = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1}
            return "data: " + json.dumps({**data, "model": model, "choices": choices, **extra})

        def delta(d: dict[str, Any], finish: str | None = None) -> str:
            return chunk([{"index": 0, "delta": d, "finish_reason": finish}]) + "\n\n"

        try:
            yield delta({"role": "assistant", "content": "answer "})
            await self._held(text)
            yield delta({"content": f"to {text}"})
            yield delta({}, "stop")
            yield chunk([], usage=dict(USAGE)) + "\n\ndata: [DONE]\n\n"
        finally:
            with self.lock:
                self.in_flight[text] -= 1


@contextmanager
def upstream(hold_word: str = "HOLD") -> Iterator[tuple[Upstream, str]]:
    up = Upstream(hold_word)
    with serve(up.app) as url:
        yield up, url


@contextmanager
def gateway_app(
    settings: Settings, reload: Callable[[], Settings] | None = None
) -> Iterator[tuple[Starlette, str]]:
    """The gateway in a thread (``reload``: reads the configuration again for
    ``/admin/reload``); yield its app (``app.state.deferred``) and URL."""
    app = create_app(settings, reload=reload)
    with serve(app, lifespan="on", start_within=60, grace=2) as url:
        yield app, url


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something true (bounded); return that."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.02)
