"""The gateway's OpenAPI 3.0 document, served at ``GET /openapi.json``.

It describes every route, its request body and its answers (errors included: OpenAI-shaped
on ``/v1/*`` and ``/admin/*``, Anthropic-shaped on ``/v1/messages``, ``{"error": "..."}`` on
``/api/*``), and the bearer key when
keys are configured. The test suite fuzzes every route from it (schemathesis): no input may
get a 5xx or hang.
"""

from __future__ import annotations

from typing import Any

from tierlm import __version__

_OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": "string", "nullable": True},
                "param": {"type": "string", "nullable": True},
            },
        }
    },
}
_OLLAMA_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
_CONTENT_PART = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string"}, "text": {"type": "string"}},
}
_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {
            "oneOf": [{"type": "string"}, {"type": "array", "items": _CONTENT_PART}],
            "nullable": True,
        },
        "name": {"type": "string"},
        "tool_call_id": {"type": "string"},
        "tool_calls": {"type": "array", "items": {"type": "object"}},
    },
}
_OPTIONS = {
    "type": "object",
    "properties": {
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1},
        "top_k": {"type": "integer", "minimum": 0},
        "seed": {"type": "integer"},
        "num_predict": {"type": "integer"},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    },
}
_CHAT = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        "model": {"type": "string", "description": "auto, a tier, or a backend (pin)"},
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "stream": {"type": "boolean"},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "seed": {"type": "integer"},
        "n": {"type": "integer", "enum": [1]},
        "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {"oneOf": [{"type": "string"}, {"type": "object"}]},
        "stream_options": {
            "type": "object",
            "properties": {"include_usage": {"type": "boolean"}},
        },
        "tierlm": {"type": "object", "description": "routing hints"},
    },
}
_OLLAMA_CHAT = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        "model": {"type": "string"},
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "stream": {"type": "boolean"},
        "format": {"oneOf": [{"type": "string", "enum": ["json"]}, {"type": "object"}]},
        "options": _OPTIONS,
        "tools": {"type": "array", "items": {"type": "object"}},
    },
}
_OLLAMA_GENERATE = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        "model": {"type": "string"},
        "prompt": {"type": "string"},
        "system": {"type": "string"},
        "stream": {"type": "boolean"},
        "format": {"oneOf": [{"type": "string", "enum": ["json"]}, {"type": "object"}]},
        "options": _OPTIONS,
    },
}
_FEEDBACK = {
    "type": "object",
    "required": ["request_id"],
    "properties": {
        "request_id": {"type": "string"},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "thumbs": {"type": "string", "enum": ["up", "down"]},
        "text": {"type": "string"},
    },
}
_ANTHROPIC_ERROR = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"type": "string", "enum": ["error"]},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
_ANTHROPIC_BLOCK = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string", "enum": ["text", "image", "tool_use", "tool_result"]},
        "text": {"type": "string"},
        "id": {"type": "string"},
        "name": {"type": "string"},
        "input": {"type": "object"},
        "tool_use_id": {"type": "string"},
        "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
        "source": {"type": "object"},
    },
}
_ANTHROPIC_MESSAGES = {
    "type": "object",
    "required": ["model", "messages", "max_tokens"],
    "properties": {
        "model": {"type": "string", "description": "auto, a tier, or a backend (pin)"},
        "max_tokens": {"type": "integer", "minimum": 1},
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"type": "string", "enum": ["user", "assistant"]},
                    "content": {
                        "oneOf": [
                            {"type": "string"},
                            {"type": "array", "items": _ANTHROPIC_BLOCK},
                        ]
                    },
                },
            },
        },
        "system": {"oneOf": [{"type": "string"}, {"type": "array", "items": _CONTENT_PART}]},
        "stream": {"type": "boolean"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "top_p": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1},
        "top_k": {"type": "integer", "minimum": 0},
        "stop_sequences": {"type": "array", "items": {"type": "string"}},
        "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {"type": "object"},
        "metadata": {"type": "object", "properties": {"user_id": {"type": "string"}}},
        "tierlm": {"type": "object", "description": "routing hints"},
    },
}
_EMBED_INPUT = {
    "oneOf": [
        {"type": "string"},
        {"type": "array", "minItems": 1, "items": {"type": "string"}},
    ]
}
_EMBEDDINGS = {
    "type": "object",
    "required": ["input"],
    "properties": {
        "input": _EMBED_INPUT,
        "model": {"type": "string", "description": "auto, embedder, a tier or a backend"},
        "encoding_format": {"type": "string", "enum": ["float", "base64"]},
        "dimensions": {"type": "integer", "minimum": 1},
        "user": {"type": "string"},
    },
}
_OLLAMA_EMBED = {
    "type": "object",
    "required": ["input"],
    "properties": {
        "input": _EMBED_INPUT,
        "model": {"type": "string"},
        "dimensions": {"type": "integer", "minimum": 1},
        "truncate": {"type": "boolean"},
    },
}
_ANY_OBJECT = {"type": "object"}
_BATCH = {
    "type": "object",
    "required": ["input_file_id", "endpoint", "completion_window"],
    "properties": {
        "input_file_id": {"type": "string"},
        "endpoint": {"type": "string", "enum": ["/v1/chat/completions"]},
        "completion_window": {"type": "string"},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_UPLOAD = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "purpose"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "purpose": {"type": "string", "enum": ["batch"]},
                },
            }
        }
    },
}
_BACKEND = {
    "type": "object",
    "required": ["backend"],
    "properties": {"backend": {"type": "string"}},
}


def _answers(ok: str, error: dict[str, Any], *, stream: bool = False) -> dict[str, Any]:
    media = {"application/json": {"schema": _ANY_OBJECT}}
    if stream:
        media["text/event-stream"] = {"schema": {"type": "string"}}
        media["application/x-ndjson"] = {"schema": {"type": "string"}}
    err = {"description": "error", "content": {"application/json": {"schema": error}}}
    return {"200": {"description": ok, "content": media}, "default": err}


def _op(
    summary: str,
    error: dict[str, Any],
    body: dict[str, Any] | None = None,
    *,
    stream: bool = False,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": _answers(summary, error, stream=stream)}
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    if params:
        op["parameters"] = params
    return op


def openapi_document(*, keys: bool) -> dict[str, Any]:
    """The document; ``keys`` says whether routes need a bearer API key."""
    e, o = _OPENAI_ERROR, _OLLAMA_ERROR
    since = {"name": "since", "in": "query", "required": False, "schema": {"type": "string"}}
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "tierlm gateway", "version": __version__},
        "paths": {
            "/v1/chat/completions": {"post": _op("chat completion", e, _CHAT, stream=True)},
            "/v1/models": {"get": _op("models the key may use", e)},
            "/v1/messages": {
                "post": _op(
                    "Anthropic Messages", _ANTHROPIC_ERROR, _ANTHROPIC_MESSAGES, stream=True
                )
            },
            "/v1/embeddings": {"post": _op("embeddings", e, _EMBEDDINGS)},
            "/api/chat": {"post": _op("Ollama chat", o, _OLLAMA_CHAT, stream=True)},
            "/api/embed": {"post": _op("Ollama embeddings", o, _OLLAMA_EMBED)},
            "/api/generate": {"post": _op("Ollama generate", o, _OLLAMA_GENERATE, stream=True)},
            "/api/tags": {"get": _op("Ollama model list", o)},
            "/api/show": {
                "post": _op(
                    "Ollama model details",
                    o,
                    {
                        "type": "object",
                        "required": ["model"],
                        "properties": {"model": {"type": "string"}},
                    },
                )
            },
            "/api/version": {"get": _op("version", o)},
            "/health": {"get": _op("health", e)},
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "default": {
                            "description": "error",
                            "content": {"application/json": {"schema": e}},
                        },
                    },
                }
            },
            "/admin/health": {"get": _op("every backend's health", e)},
            "/admin/report": {"get": _op("the ledger's report", e, params=[since])},
            "/admin/dashboard": {"get": _op("the dashboard's data", e, params=[since])},
            "/admin/reload": {"post": _op("reload the configuration", e)},
            "/admin/models": {"get": _op("the local models and their state", e)},
            "/admin/models/load": {"post": _op("load a local model", e, _BACKEND)},
            "/admin/models/unload": {"post": _op("unload a local model", e, _BACKEND)},
            "/v1/feedback": {"post": _op("feedback on one request", e, _FEEDBACK)},
            "/openapi.json": {"get": _op("this document", e)},
            **_batch_paths(e),
        },
    }
    if keys:
        doc["components"] = {"securitySchemes": {"key": {"type": "http", "scheme": "bearer"}}}
        doc["security"] = [{"key": []}]
    return doc


def _batch_paths(e: dict[str, Any]) -> dict[str, Any]:
    """The Batch API's routes (:mod:`tierlm.server.batches`)."""

    def path(name: str) -> list[dict[str, Any]]:
        return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}]

    page = [
        {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer"}},
        {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
    ]
    return {
        "/v1/files": {
            "post": {**_op("upload a batch input file (JSONL)", e), "requestBody": _UPLOAD},
            "get": _op("the files this key can see", e, params=page[:1]),
        },
        "/v1/files/{file_id}": {"get": _op("one file", e, params=path("file_id"))},
        "/v1/files/{file_id}/content": {"get": _op("a file's content", e, params=path("file_id"))},
        "/v1/batches": {
            "post": _op("start a batch", e, _BATCH),
            "get": _op("the batches this key can see", e, params=page),
        },
        "/v1/batches/{batch_id}": {"get": _op("one batch", e, params=path("batch_id"))},
        "/v1/batches/{batch_id}/cancel": {
            "post": _op("cancel a batch", e, params=path("batch_id"))
        },
    }
