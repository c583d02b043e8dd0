"""Every bad input to the gateway answers with the right status and an OpenAI-shaped error
(Ollama-shaped on ``/api/*``), and a stream that fails after it committed ends with an
in-band error, never with a clean finish.

Real servers on 127.0.0.1: the gateway app under uvicorn (API keys on, a small body limit)
in front of the fake OpenAI-wire upstream (``tests/fakes/openai_server.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from fakes import serve
from fakes.openai_server import make_app
from server_util import ADMIN_KEY, USER_KEY, serve_gateway, settings, sha, upstream_backend
from tierlm.config.settings import ApiKeyConfig
from tierlm.server.auth import KeyRing, presented_key

LIMIT = 4096
OTHER_KEY = "tlm-test-other-key-0123456789"


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    app = make_app()  # its gate stays closed: the "stall" backend never finishes by itself
    with serve(app) as upstream:
        s = settings(
            [
                upstream_backend("site", upstream, "plain"),
                upstream_backend("cut", upstream, "sse-truncated"),
                upstream_backend("errs", upstream, "sse-error"),
                upstream_backend("down", upstream, "server"),
                upstream_backend("stall", upstream, "gated"),
            ],
            [
                {"name": "site", "backends": ["site"]},
                {"name": "cut", "backends": ["cut"]},
                {"name": "errs", "backends": ["errs"]},
                {"name": "down", "backends": ["down"]},
                {"name": "stall", "backends": ["stall"]},
            ],
            server={
                "max_body_bytes": LIMIT,
                "api_keys": [
                    {
                        "name": "user",
                        "hash": sha(USER_KEY),
                        "tiers": ["site", "cut", "errs", "down", "stall"],
                    },
                    {"name": "other", "hash": sha(OTHER_KEY), "tiers": ["cut"]},
                    {"name": "admin", "hash": sha(ADMIN_KEY), "admin": True},
                ],
            },
        )
        with serve_gateway(s) as url:
            yield url
        app.state.gate.set()


@pytest.fixture
def client(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway, headers={"authorization": f"Bearer {USER_KEY}"}, timeout=30
    ) as c:
        yield c


def _error(r: httpx.Response, status: int | tuple[int, ...]) -> dict[str, Any]:
    assert r.status_code in (status if isinstance(status, tuple) else (status,)), r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert set(err) >= {"message", "type", "code", "param"}
    return dict(err)


def _chat(client: httpx.Client, body: Any, **kw: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json=body, **kw)


MSG = [{"role": "user", "content": "hi"}]


def test_a_good_request_works(client: httpx.Client) -> None:
    r = _chat(client, {"model": "site", "messages": MSG})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Hello"
    assert r.headers["x-tierlm-backend"] == "site"


def test_invalid_json(client: httpx.Client) -> None:
    r = client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert "not valid JSON" in _error(r, 400)["message"]
    r = client.post("/v1/chat/completions", content=b"")
    _error(r, 400)
    r = client.post("/v1/chat/completions", content=b"[" * 2000 + b"]" * 2000)  # too deep
    _error(r, 400)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([1, 2], None),
        ({"model": "site"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": MSG, "temperature": "hot"}, "temperature"),
        ({"messages": MSG, "temperature": 7}, "temperature"),
        ({"messages": MSG, "max_tokens": 0}, "max_tokens"),
        ({"messages": MSG, "stop": 5}, "stop"),
        ({"messages": MSG, "tierlm": {"privacy": "secret"}}, "tierlm.privacy"),
        ({"messages": MSG, "tierlm": "private"}, "tierlm"),
        ({"messages": MSG, "stream_options": 3}, "stream_options"),
        ({"messages": MSG, "n": 3}, "n"),
        ({"messages": MSG, "model": 42}, "model"),
    ],
)
def test_schema_errors_name_the_field(
    client: httpx.Client,
    body: Any,
    param: str | None,
) -> None:
    err = _error(_chat(client, body), 400)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    if param:
        assert param in err["message"]


def test_bad_hint_header(client: httpx.Client) -> None:
    r = _chat(client, {"messages": MSG}, headers={"x-tierlm-privacy": "very"})
    assert _error(r, 400)["param"] == "tierlm.privacy"


def test_unknown_model(client: httpx.Client) -> None:
    err = _error(_chat(client, {"model": "gpt-9", "messages": MSG}), 404)
    assert err["code"] == "model_not_found"
    assert "gpt-9" in err["message"]


def test_too_large(client: httpx.Client) -> None:
    big = {"messages": [{"role": "user", "content": "x" * (LIMIT + 10)}]}
    assert _error(_chat(client, big), 413)["code"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:  # no content-length: the limit holds while reading
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(LIMIT // 512 + 2):
            yield b"y" * 512
        yield b'"}]}'

    r = client.post("/v1/chat/completions", content=chunks())
    _error(r, 413)


def test_missing_and_bad_keys(gateway: str) -> None:
    with httpx.Client(base_url=gateway) as c:
        assert (
            _error(c.post("/v1/chat/completions", json={"messages": MSG}), 401)["type"]
            == "authentication_error"
        )
        _error(c.get("/v1/models"), 401)
        r = c.post(
            "/v1/chat/completions", json={"messages": MSG}, headers={"authorization": "Bearer nope"}
        )
        assert _error(r, 401)["code"] == "invalid_api_key"
        r = c.post(
            "/v1/chat/completions",
            json={"model": "site", "messages": MSG},
            headers={"x-api-key": USER_KEY},
        )
        assert r.status_code == 200
        assert c.get("/health").status_code == 200  # health stays open


def test_key_not_allowed_that_tier(gateway: str) -> None:
    with httpx.Client(base_url=gateway, headers={"x-api-key": OTHER_KEY}) as c:
        err = _error(c.post("/v1/chat/completions", json={"model": "site", "messages": MSG}), 403)
        assert err["type"] == "permission_error"
        # auto: the key's tiers are the only candidates, so it is routed to `cut`
        r = c.post("/v1/chat/completions", json={"messages": MSG})
        assert r.headers.get("x-tierlm-tier") == "cut"


def test_admin_routes_need_an_admin_key(gateway: str, client: httpx.Client) -> None:
    assert _error(client.get("/metrics"), 403)["type"] == "permission_error"
    _error(client.get("/admin/health"), 403)
    with httpx.Client(base_url=gateway) as c:
        _error(c.get("/metrics"), 401)
        r = c.get("/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert r.status_code == 200
        assert "tierlm_requests_total" in r.text


def test_wrong_method_and_unknown_route(client: httpx.Client) -> None:
    assert _error(client.get("/v1/chat/completions"), 405)["code"] == "method_not_allowed"
    assert _error(client.get("/v1/nothing-here"), 404)["type"] == "not_found_error"
    r = client.get("/api/chat")
    assert r.status_code == 405 and isinstance(r.json()["error"], str)


def test_upstream_failure_before_commit_is_an_error_response(client: httpx.Client) -> None:
    # an upstream 500, retried: 502, or 503 once the circuit breaker opened
    r = _chat(client, {"model": "down", "messages": MSG})
    err = _error(r, (502, 503))
    assert "down" in err["message"]
    assert r.headers["x-tierlm-request-id"] == err["request_id"]
    r = _chat(client, {"model": "down", "messages": MSG, "stream": True})
    assert r.headers["content-type"].startswith("application/json")
    _error(r, (502, 503))


def _sse_events(r: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]


@pytest.mark.parametrize("backend", ["cut", "errs"])
def test_mid_stream_failure_ends_with_in_band_error(client: httpx.Client, backend: str) -> None:
    body = {
        "model": backend,
        "messages": MSG,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200  # committed: the headers were already sent
        assert r.headers["x-tierlm-backend"] == backend
        events = _sse_events(r)
    assert "[DONE]" not in events
    chunks = [json.loads(e) for e in events]
    assert (
        "".join(
            c["choices"][0]["delta"].get("content", "") for c in chunks[:-1] if c.get("choices")
        )
        == "Hello"[: 5 if backend == "cut" else 3]
    )
    assert not any(c.get("choices") and c["choices"][0]["finish_reason"] for c in chunks)
    assert chunks[-1]["error"]["message"]
    assert chunks[-1]["error"]["backend"] == backend


def test_mid_stream_failure_ollama(client: httpx.Client) -> None:
    with client.stream("POST", "/api/chat", json={"model": "cut", "messages": MSG}) as r:
        assert r.status_code == 200
        lines = [json.loads(x) for x in r.iter_lines() if x]
    assert not any(x.get("done") for x in lines)
    assert "error" in lines[-1]
    assert "".join(x["message"]["content"] for x in lines[:-1]) == "Hello"


def test_ollama_errors_are_ollama_shaped(client: httpx.Client) -> None:
    r = client.post("/api/chat", json={"model": "llama9", "messages": MSG})
    assert r.status_code == 404 and "llama9" in r.json()["error"]
    r = client.post("/api/generate", json={"model": "site"})
    assert r.status_code == 400 and "prompt" in r.json()["error"]
    r = client.post("/api/chat", content=b"[")
    assert r.status_code == 400


def test_keyring_unit() -> None:
    assert presented_key({"authorization": "Bearer  abc "}) == "abc"
    assert presented_key({"authorization": "Basic abc"}) is None
    assert presented_key({"x-api-key": "k"}) == "k"
    with pytest.raises(ValidationError, match="sha256") as e:
        ApiKeyConfig(name="x", hash="plaintext-key")
    assert "plaintext-key" not in str(e.value).split("input_value")[0]


def test_keys_hash_command_matches_the_gateway() -> None:
    import typer
    from typer.testing import CliRunner

    from tierlm.cli import keys

    app = typer.Typer()
    keys.register(app)
    app.callback()(lambda: None)
    r = CliRunner().invoke(app, ["keys", "hash"], input=USER_KEY + "\n")
    assert r.exit_code == 0
    digest = r.stdout.strip()
    assert digest == sha(USER_KEY)
    ring = KeyRing([ApiKeyConfig(name="u", hash=digest)])
    assert ring.identify({"authorization": f"Bearer {USER_KEY}"}) is not None
    r = CliRunner().invoke(app, ["keys", "hash", "--generate"])
    assert r.exit_code == 0 and len(r.stdout.strip()) == 64


def test_client_request_id_is_kept(client: httpx.Client) -> None:
    """A client's x-request-id is echoed as a correlation field; the id is the gateway's."""
    r = _chat(client, {"model": "site", "messages": MSG}, headers={"x-request-id": "abc-123"})
    assert r.headers["x-tierlm-request-id"].startswith("req-")
    assert r.headers["x-request-id"] == "abc-123"
    assert r.json()["tierlm"]["client_request_id"] == "abc-123"
    r = _chat(client, {"model": "site", "messages": MSG}, headers={"x-request-id": "bad id\t!"})
    assert r.headers["x-tierlm-request-id"].startswith("req-")
    assert "x-request-id" not in r.headers


def test_models_list_follows_the_key(gateway: str) -> None:
    with httpx.Client(base_url=gateway, headers={"x-api-key": OTHER_KEY}) as c:
        ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
    assert ids == ["auto", "cut"]


def test_client_gone_mid_stream_frees_everything(gateway: str, client: httpx.Client) -> None:
    body = {"model": "stall", "messages": MSG, "stream": True}  # the upstream never finishes
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # the first chunk, then hang up
    # only freeing the abandoned stream can bring in-flight to 0; the deadline is a hang guard
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=gateway, headers={"x-api-key": ADMIN_KEY}) as c:
        while "tierlm_requests_in_flight 0.0\n" not in c.get("/metrics").text:
            assert time.monotonic() < deadline, "the abandoned stream is still in flight"
            time.sleep(0.05)


def test_nothing_left_in_flight(gateway: str) -> None:
    with httpx.Client(base_url=gateway, headers={"x-api-key": ADMIN_KEY}) as c:
        text = c.get("/metrics").text
    assert "tierlm_requests_in_flight 0.0\n" in text
    assert "tierlm_stream_errors_total" in text


def test_stale_health_never_leaves_nothing_to_try() -> None:
    import time

    from tierlm.backends.base import BackendHealth
    from tierlm.router import Router
    from tierlm.server.gateway import Gateway
    from tierlm.types import ChatRequest

    s = settings(
        [
            upstream_backend("a", "http://127.0.0.1:9", "plain"),
            upstream_backend("b", "http://127.0.0.1:9", "plain"),
        ],
        [{"name": "site", "backends": ["a", "b"]}],
    )
    router = Router(s)
    gw = Gateway(router)
    gw.health.checked_at = time.monotonic()
    gw.health.last = {"a": BackendHealth(ok=False), "b": BackendHealth(ok=True)}
    req = ChatRequest.from_prompt("hi")
    plan = router.plan(req, gw.conditions(req, None))
    assert [c.backend for c in plan.candidates] == ["b"]  # health skips a
    pinned = ChatRequest.from_prompt("hi", model="a")
    assert gw.conditions(pinned, None).healthy is None  # ... but never all there is
    gw.health.last["b"] = BackendHealth(ok=False)
    plan = router.plan(req, gw.conditions(req, None))
    assert [c.backend for c in plan.candidates] == ["a", "b"]


def test_feedback_and_report_over_the_ledger(tmp_path: Any) -> None:
    """With the default ledger (SQLite in the data directory): requests are recorded, feedback
    is stored, and the admin report counts them."""
    with serve(make_app()) as upstream:
        s = settings(
            [upstream_backend("site", upstream, "plain")],
            [{"name": "site", "backends": ["site"]}],
            data_dir=str(tmp_path),
            server={
                "api_keys": [
                    {"name": "user", "hash": sha(USER_KEY)},
                    {"name": "admin", "hash": sha(ADMIN_KEY), "admin": True},
                ]
            },
        )
        s.ledger.url = None
        with serve_gateway(s) as url, httpx.Client(base_url=url, timeout=30) as c:
            user = {"x-api-key": USER_KEY}
            r = c.post("/v1/chat/completions", json={"messages": MSG}, headers=user)
            assert r.status_code == 200
            rid = r.headers["x-tierlm-request-id"]
            r = c.post("/v1/feedback", json={"request_id": rid, "thumbs": "up"}, headers=user)
            assert r.status_code == 200 and r.json() == {"ok": True, "request_id": rid}
            _error(c.post("/v1/feedback", json={"thumbs": "up"}, headers=user), 400)
            _error(c.get("/admin/report", headers=user), 403)
            deadline = time.monotonic() + 10
            while True:  # records are written behind the answer, by the ledger's writer
                report = c.get("/admin/report", headers={"x-api-key": ADMIN_KEY})
                assert report.status_code == 200, report.text
                if report.json()["requests"] >= 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            rep = report.json()
            assert rep["requests"] == 1
            assert [g["name"] for g in rep["by_backend"]] == ["site"]
            assert [g["name"] for g in rep["by_key"]] == ["user"]
