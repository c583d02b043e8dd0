"""Callables and a webhook server for the layer-0 rule tests (named by import path in
rule configs, as a deployment would)."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tierlm.types import ChatRequest


def pump_state(slots: dict[str, Any], request: ChatRequest) -> str:
    return f"pump {slots['id']} is {'running' if slots['id'] % 2 else 'stopped'}"


async def pump_call(slots: dict[str, Any], request: ChatRequest) -> dict[str, Any]:
    return {"tool_calls": [{"name": "read_pump", "arguments": {"id": slots["id"]}}]}


def wrong_shape(slots: dict[str, Any], request: ChatRequest) -> int:
    return 42


def webhook_app() -> Starlette:
    """``/ok`` answers JSON from the slots, ``/text`` plain text, ``/fail`` 500, ``/hang``
    never; bodies are kept in ``app.state.seen``."""

    async def ok(request: Request) -> Response:
        body = await request.json()
        request.app.state.seen.append(body)
        return JSONResponse({"content": f"level of tank {body['slots']['tank']}: 73%"})

    async def text(request: Request) -> Response:
        request.app.state.seen.append(await request.json())
        return PlainTextResponse("done")

    async def fail(request: Request) -> Response:
        return PlainTextResponse("boom", status_code=500)

    async def hang(request: Request) -> Response:
        await asyncio.Event().wait()  # never set: the client's timeout ends it
        return PlainTextResponse("late")

    app = Starlette(
        routes=[
            Route("/ok", ok, methods=["POST"]),
            Route("/text", text, methods=["POST"]),
            Route("/fail", fail, methods=["POST"]),
            Route("/hang", hang, methods=["POST"]),
        ]
    )
    app.state.seen = []
    return app
