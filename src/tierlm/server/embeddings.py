"""The embedding routes: OpenAI's ``POST /v1/embeddings`` and Ollama's ``POST /api/embed``.

Both bodies map onto one :class:`~tierlm.embeddings.EmbedRequest`, which the Router's
:class:`~tierlm.embeddings.Embeddings` plans (privacy, key, budget), answers and records.

- ``input``: a string or a non-empty list of non-empty strings, at most
  ``embeddings.max_inputs`` of them, each at most ``embeddings.max_input_chars`` characters;
  token-id arrays are refused (400: tierlm routes on text it can scan).
- ``model``: ``auto``, ``embedder`` (or the in-process model's name), a tier or an embedding
  backend; ``dimensions`` (OpenAI, Ollama): refused (400) unless the answering model has it.
- OpenAI's ``encoding_format``: ``float`` (default) or ``base64`` (little-endian float32, as
  the ``openai`` SDK asks for by default); ``user`` is accepted and not forwarded.
- The privacy hint comes from the ``x-tierlm-privacy`` header.

Answers carry ``x-tierlm-*`` headers (request id, tier, backend, boundary, privacy) and, on
``/v1/embeddings``, a ``tierlm`` object. Errors are OpenAI-shaped on ``/v1/*`` and
``{"error": "..."}`` on ``/api/*``.
"""

from __future__ import annotations

import base64
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from tierlm.embeddings import EmbedRequest, EmbedResult
from tierlm.errors import TierlmError
from tierlm.server.gateway import (
    FieldError,
    Gateway,
    client_request_id,
    error_response,
    header_hints,
    json_response,
    read_json,
)
from tierlm.server.ollama import ollama_error
from tierlm.types import Privacy

if TYPE_CHECKING:
    from collections.abc import Callable

OPENAI_ROUTE = "/v1/embeddings"
OLLAMA_ROUTE = "/api/embed"
_OPENAI_FIELDS = {"input", "model", "encoding_format", "dimensions", "user"}
_OLLAMA_FIELDS = {"input", "model", "dimensions", "truncate", "options", "keep_alive"}


def _inputs(value: Any, gw: Gateway) -> list[str]:
    """``input`` as a list of texts; 400 naming the item when one is not a usable text."""
    cfg = gw.settings.embeddings
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list):
        raise FieldError("input: must be a string or a list of strings", "input")
    if not texts:
        raise FieldError("input: must not be an empty list", "input")
    if len(texts) > cfg.max_inputs:
        raise FieldError(f"input: at most {cfg.max_inputs} texts per request", "input")
    for i, t in enumerate(texts):
        where = "input" if isinstance(value, str) else f"input[{i}]"
        if isinstance(t, int | list) and not isinstance(t, bool):
            raise FieldError(f"{where}: token-id arrays are not supported; send the text", "input")
        if not isinstance(t, str):
            raise FieldError(f"{where}: must be a string", where)
        if not t:
            raise FieldError(f"{where}: must not be empty", where)
        if len(t) > cfg.max_input_chars:
            raise FieldError(f"{where}: longer than {cfg.max_input_chars} characters", where)
    return texts


def _request(body: Any, fields: set[str], request: Request, gw: Gateway) -> EmbedRequest:
    """The common part of both wire formats (the key is set by the caller)."""
    if not isinstance(body, dict):
        raise FieldError("request body must be a JSON object")
    if "input" not in body:
        raise FieldError("input: field required", "input")
    unknown = sorted(k for k in body if k not in fields)
    if unknown:
        raise FieldError(f"{unknown[0]}: unknown field", unknown[0])
    dims = body.get("dimensions")
    if dims is not None and (type(dims) is not int or dims < 1):
        raise FieldError("dimensions: must be a positive integer", "dimensions")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise FieldError("model: must be a string", "model")
    hint = header_hints(request).get("privacy")
    try:
        privacy = Privacy(hint) if hint is not None else None
    except ValueError:
        raise FieldError(
            f"x-tierlm-privacy: one of {', '.join(p.value for p in Privacy)}", "x-tierlm-privacy"
        ) from None
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise FieldError("encoding_format: must be 'float' or 'base64'", "encoding_format")
    request.state.encoding_format = fmt  # rendered by _openai_body
    name = (model or "auto").removesuffix(":latest") or "auto"
    return EmbedRequest(
        _inputs(body["input"], gw),
        model=name,
        dimensions=dims,
        privacy=privacy,
        client_request_id=client_request_id(request),
    )


async def _answer(
    request: Request,
    route: str,
    fields: set[str],
    error: Callable[[TierlmError, dict[str, str] | None], Response],
    render: Callable[[Request, EmbedRequest, EmbedResult, float], dict[str, Any]],
) -> Response:
    """Identify the key, parse, embed (through the Router) and render; counted in the
    metrics however it ends."""
    gw: Gateway = request.app.state.gateway
    started = time.perf_counter()
    gw.metrics.in_flight += 1
    req: EmbedRequest | None = None
    try:
        key = gw.keys.identify(request.headers)
        req = _request(await read_json(request, gw.max_body), fields, request, gw)
        req.api_key = key
        req.chat.api_key_id = key.name if key else None
        result = await gw.router.embeddings.embed(req, request.headers)
    except TierlmError as e:
        gw.account(
            route,
            None,
            e.tier or "",
            e.backend or "",
            e.status,
            started,
            request_id=req.request_id if req is not None else None,
            client_id=client_request_id(request),
        )
        return error(e, {"x-tierlm-request-id": req.request_id} if req is not None else None)
    finally:
        gw.metrics.in_flight -= 1
    gw.account(
        route,
        result.plan,
        result.tier,
        result.backend,
        200,
        started,
        request_id=req.request_id,
        client_id=req.chat.client_request_id,
    )
    headers = {
        "x-tierlm-request-id": req.request_id,
        "x-tierlm-tier": result.tier,
        "x-tierlm-backend": result.backend,
        "x-tierlm-boundary": result.boundary.label,
        "x-tierlm-privacy": result.plan.privacy.value,
    }
    if req.client_request_id:
        headers["x-request-id"] = req.client_request_id
    return json_response(render(request, req, result, started), 200, headers)


def _openai_body(
    request: Request, req: EmbedRequest, result: EmbedResult, started: float
) -> dict[str, Any]:
    fmt = request.state.encoding_format

    def encode(v: list[float]) -> list[float] | str:
        if fmt == "float":
            return v
        return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")

    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(v)}
            for i, v in enumerate(result.vectors)
        ],
        "model": result.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        "tierlm": {
            "request_id": req.request_id,
            "tier": result.tier,
            "backend": result.backend,
            "boundary": result.boundary.label,
            "privacy": result.plan.privacy.value,
            "sensitive": result.plan.sensitive,
            "reasons": list(result.plan.reasons),
        },
    }


def _ollama_body(
    request: Request, req: EmbedRequest, result: EmbedResult, started: float
) -> dict[str, Any]:
    return {
        "model": result.model,
        "embeddings": result.vectors,
        "total_duration": int((time.perf_counter() - started) * 1e9),
        "load_duration": 0,
        "prompt_eval_count": result.prompt_tokens,
    }


async def openai_embeddings(request: Request) -> Response:
    """``POST /v1/embeddings``."""
    return await _answer(request, OPENAI_ROUTE, _OPENAI_FIELDS, error_response, _openai_body)


async def ollama_embed(request: Request) -> Response:
    """``POST /api/embed``."""
    return await _answer(request, OLLAMA_ROUTE, _OLLAMA_FIELDS, ollama_error, _ollama_body)
