"""OpenTelemetry traces (:mod:`tierlm.telemetry`) of requests through a real gateway.

Real parts: the gateway under uvicorn on 127.0.0.1, the misbehaving OpenAI-wire upstream
(``fakes.faulty_upstream``) for fallbacks, rescues and escalations, the SDK's in-memory
exporter behind its real batch processor, and, for the wire format, a local OTLP/HTTP
collector decoding the protobuf with ``opentelemetry-proto``. With tracing off, a fresh
interpreter serves requests without importing ``opentelemetry`` at all.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from fakes import serve
from fakes.faulty_upstream import FaultyUpstream, Scenario, expected_text, openai_error
from server_util import USER_KEY, fake_openai_upstream, settings, sha
from tierlm.config.settings import Settings, TelemetryConfig
from tierlm.errors import ConfigError, MissingDependency
from tierlm.ledger.records import AttemptRecord
from tierlm.router import Router
from tierlm.server import create_app
from tierlm.telemetry import Tracing
from tierlm.types import Boundary, Candidate, ChatRequest, Plan, Privacy

TESTS = Path(__file__).resolve().parent
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
TRACED = {"enabled": True, "exporter": "none"}  # the tests give the exporter


def backend(name: str, url: str, boundary: str = "site", **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "openai",
        "url": url,
        "model": f"{name}-model",
        "boundary": boundary,
        "timeouts": {"connect": 1.0, "first_token": 5.0, "stall": 5.0, "total": 10.0},
        **kw,
    }


@contextmanager
def traced_gateway(s: Settings) -> Iterator[tuple[httpx.Client, Tracing, InMemorySpanExporter]]:
    """The gateway over a Router whose tracing exports to memory; closed at the end."""
    exporter = InMemorySpanExporter()
    tracing = Tracing(s.telemetry, exporter)
    router = Router(s, tracing=tracing)
    try:
        with (
            serve(create_app(router), lifespan="on", start_within=60, grace=2) as url,
            httpx.Client(base_url=url, timeout=30) as client,
        ):
            yield client, tracing, exporter
    finally:
        router.close()


def spans(tracing: Tracing, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    tracing.flush()
    return list(exporter.get_finished_spans())


def tree(found: list[ReadableSpan]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The one root span and its attempt spans (in attempt order), checked to be a tree."""
    roots = [s for s in found if s.kind in (SpanKind.SERVER, SpanKind.INTERNAL)]
    assert len(roots) == 1, [s.name for s in found]
    root = roots[0]
    kids = sorted(
        (s for s in found if s is not root),
        key=lambda s: int(str((s.attributes or {})["tierlm.attempt"])),
    )
    assert root.context is not None
    for k in kids:
        assert k.kind is SpanKind.CLIENT
        assert k.parent is not None and k.parent.span_id == root.context.span_id
        assert k.context is not None and k.context.trace_id == root.context.trace_id
    return root, kids


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def ask(client: httpx.Client, text: str = "say the words", **body: Any) -> httpx.Response:
    payload = {"model": "auto", "messages": [{"role": "user", "content": text}], **body}
    return client.post(
        "/v1/chat/completions",
        json=payload,
        headers={"traceparent": TRACEPARENT, "authorization": f"Bearer {USER_KEY}"},
    )


def keyed(backends: list[dict[str, Any]], tiers: list[dict[str, Any]], **kw: Any) -> Settings:
    key = {"name": "app", "hash": sha(USER_KEY)}
    return settings(backends, tiers, server={"api_keys": [key]}, telemetry=TRACED, **kw)


def test_a_fallback_is_two_attempt_spans_in_the_callers_trace() -> None:
    with FaultyUpstream() as up:
        bad = openai_error("Incorrect API key provided", "invalid_request_error", "invalid_key")
        s = keyed(
            [
                backend("primary", up.add("primary", Scenario("status", status=401, body=bad))),
                backend("secondary", up.add("secondary", Scenario(tokens=5))),
            ],
            [{"name": "site", "backends": ["primary", "secondary"]}],
        )
        with traced_gateway(s) as (client, tracing, exporter):
            r = ask(client, max_tokens=32, temperature=0.2)
            assert r.status_code == 200, r.text
            assert r.headers["x-tierlm-backend"] == "secondary"
            root, (first, second) = tree(spans(tracing, exporter))
        sent = [h["traceparent"] for name in ("primary", "secondary") for h in up.headers(name)]

    # the root: a SERVER span, child of the caller's traceparent, with the route
    assert root.name == "chat auto" and root.kind is SpanKind.SERVER
    assert root.context is not None and f"{root.context.trace_id:032x}" == TRACE_ID
    assert root.parent is not None and f"{root.parent.span_id:016x}" == CLIENT_SPAN
    a = attrs(root)
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "auto"
    assert a["tierlm.backend"] == "secondary" and a["tierlm.tier"] == "site"
    assert a["tierlm.route.backend"] == "primary"  # the decision: primary first
    assert a["tierlm.route.candidates"] == ("primary", "secondary")
    assert a["tierlm.privacy"] == "public" and a["tierlm.cache"] == "bypass"
    assert a["tierlm.outcome"] == "ok" and a["tierlm.fallback"] is True
    assert a["tierlm.attempts"] == 2 and a["tierlm.api_key"] == "app"
    assert a["tierlm.route.reasons"]
    assert a["gen_ai.usage.output_tokens"] == 5
    # the failed attempt: its error type and code, outcome fallback
    f = attrs(first)
    assert first.name == "chat primary-model"
    assert f["tierlm.attempt"] == 1 and f["tierlm.attempt.outcome"] == "fallback"
    assert f["error.type"] == "BackendAuthError" and f["tierlm.backend"] == "primary"
    assert first.status.status_code is StatusCode.ERROR
    assert f["gen_ai.request.model"] == "primary-model" and f["server.address"] == "127.0.0.1"
    assert f["gen_ai.request.max_tokens"] == 32 and f["gen_ai.request.temperature"] == 0.2
    assert f["gen_ai.provider.name"] == "openai" and f["tierlm.boundary"] == "site"
    # the answer: usage, response model, outcome ok
    g = attrs(second)
    assert g["tierlm.attempt"] == 2 and g["tierlm.attempt.outcome"] == "ok"
    assert g["gen_ai.response.model"] == "upstream-model" and "error.type" not in g
    assert g["gen_ai.usage.output_tokens"] == 5 and g["gen_ai.usage.input_tokens"] == 3
    assert second.status.status_code is StatusCode.UNSET
    assert first.end_time is not None and second.start_time is not None
    assert first.end_time <= second.start_time
    # each site backend got the traceparent of its own attempt span
    assert first.context is not None and second.context is not None
    assert sent == [
        f"00-{TRACE_ID}-{first.context.span_id:016x}-01",
        f"00-{TRACE_ID}-{second.context.span_id:016x}-01",
    ]


def test_a_cache_hit_is_a_root_span_without_attempts() -> None:
    with FaultyUpstream() as up:
        s = keyed(
            [backend("site", up.add("site", Scenario(tokens=3)))],
            [{"name": "site", "backends": ["site"]}],
        )
        with traced_gateway(s) as (client, tracing, exporter):
            for _ in range(2):
                assert ask(client, temperature=0).status_code == 200
            found = spans(tracing, exporter)
    roots = [s for s in found if s.kind is SpanKind.SERVER]
    assert [attrs(r)["tierlm.cache"] for r in roots] == ["miss", "hit-exact"]
    assert [attrs(r)["tierlm.attempts"] for r in roots] == [1, 0]
    assert len(found) == 3 and up.count("site") == 1


def test_when_every_attempt_fails_the_root_span_is_an_error() -> None:
    down = openai_error("Incorrect API key provided", "invalid_request_error", "invalid_key")
    with FaultyUpstream() as up:
        s = keyed(
            [backend("site", up.add("site", Scenario("status", status=401, body=down)))],
            [{"name": "site", "backends": ["site"]}],
        )
        with traced_gateway(s) as (client, tracing, exporter):
            assert ask(client).status_code == 502
            root, (attempt,) = tree(spans(tracing, exporter))
    assert root.status.status_code is StatusCode.ERROR
    assert attrs(root)["error.type"] == "AllAttemptsFailed"
    assert attrs(root)["tierlm.outcome"] == root.status.description == "upstream_auth_error"
    assert attrs(attempt)["tierlm.attempt.outcome"] == "failed"


def test_a_retry_on_the_same_backend_is_a_retried_attempt() -> None:
    busy = openai_error("The server had an error", "server_error", None)
    with FaultyUpstream() as up:
        flaky = Scenario("status", status=500, body=busy, times=1, tokens=3)
        s = keyed(
            [backend("site", up.add("site", flaky))],
            [{"name": "site", "backends": ["site"]}],
        )
        with traced_gateway(s) as (client, tracing, exporter):
            assert ask(client).status_code == 200
            root, (first, second) = tree(spans(tracing, exporter))
    assert attrs(first)["tierlm.attempt.outcome"] == "retried"
    assert attrs(first)["error.type"] == "ServerError"
    assert attrs(second)["tierlm.attempt.outcome"] == "ok"
    assert attrs(root)["tierlm.fallback"] is False


def test_an_external_backend_never_gets_a_traceparent() -> None:
    with FaultyUpstream() as up:
        s = keyed(
            [backend("cloud", up.add("cloud", Scenario(tokens=3)), "external", api_key="sk-t")],
            [{"name": "cloud", "backends": ["cloud"]}],
        )
        with traced_gateway(s) as (client, tracing, exporter):
            r = ask(client)
            assert r.status_code == 200, r.text
            _, (attempt,) = tree(spans(tracing, exporter))
        assert attrs(attempt)["tierlm.boundary"] == "external"
        assert up.count("cloud") == 1
        assert all("traceparent" not in h for h in up.headers("cloud"))


def test_a_streamed_attempt_span_ends_with_the_stream_and_its_usage() -> None:
    hold = threading.Event()
    with FaultyUpstream() as up, _released(hold):
        s = keyed(
            [backend("site", up.add("site", Scenario(tokens=8, hold=hold)))],
            [{"name": "site", "backends": ["site"]}],
        )
        with traced_gateway(s) as (client, tracing, exporter):
            body = {
                "model": "auto",
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "say the words"}],
            }
            headers = {"authorization": f"Bearer {USER_KEY}"}
            with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                lines = r.iter_lines()
                next(ln for ln in lines if '"content":"w0"' in ln)
                assert spans(tracing, exporter) == []  # the stream is still open
                released = time.time_ns()
                hold.set()
                rest = [ln for ln in lines if ln.startswith("data: ")]
            assert rest[-1] == "data: [DONE]"
            root, (attempt,) = tree(spans(tracing, exporter))
    assert root.kind is SpanKind.SERVER and root.parent is None  # no traceparent was sent
    a = attrs(attempt)
    assert attempt.end_time is not None and attempt.end_time >= released
    assert root.end_time is not None and root.end_time >= attempt.end_time
    assert a["tierlm.attempt.outcome"] == "ok" and a["tierlm.stream"] is True
    assert a["gen_ai.usage.output_tokens"] == 8 and "tierlm.ttft_ms" in a
    assert attrs(root)["gen_ai.usage.output_tokens"] == 8


def test_a_stream_the_client_leaves_ends_its_spans_as_cancelled() -> None:
    hold = threading.Event()
    with FaultyUpstream() as up, _released(hold):
        s = keyed(
            [backend("site", up.add("site", Scenario(tokens=8, hold=hold)))],
            [{"name": "site", "backends": ["site"]}],
        )
        with traced_gateway(s) as (client, tracing, exporter):
            body = {"stream": True, "messages": [{"role": "user", "content": "say the words"}]}
            headers = {"authorization": f"Bearer {USER_KEY}"}
            with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                next(ln for ln in r.iter_lines() if '"content":"w0"' in ln)
            # the client hung up mid-answer; the gateway notices and ends the request
            deadline = time.monotonic() + 10
            while len(found := spans(tracing, exporter)) < 2 and time.monotonic() < deadline:
                tracing.flush()
            root, (attempt,) = tree(found)
    assert attrs(root)["tierlm.outcome"] == "cancelled"
    assert attrs(attempt)["tierlm.attempt.outcome"] == "cancelled"
    assert attempt.end_time is not None and root.end_time is not None


@contextmanager
def _released(hold: threading.Event) -> Iterator[None]:
    """Whatever happens in the block, the held upstream is let go at its end."""
    try:
        yield
    finally:
        hold.set()


def test_a_stream_cut_midway_shows_the_rescued_attempt_and_its_continuation() -> None:
    with FaultyUpstream() as up:
        s = keyed(
            [
                backend("cut", up.add("cut", Scenario("cut", after=6, tokens=12))),
                backend("rest", up.add("rest", Scenario(tokens=12, on_continue="continue"))),
            ],
            [{"name": "site", "backends": ["cut", "rest"]}],
        )
        with traced_gateway(s) as (client, tracing, exporter):
            r = ask(client, stream=True)
            text = "".join(
                json.loads(ln[6:])["choices"][0]["delta"].get("content") or ""
                for ln in r.text.splitlines()
                if ln.startswith("data: {")
            )
            assert text == expected_text(12)
            root, (cut, rest) = tree(spans(tracing, exporter))
    assert attrs(cut)["tierlm.attempt.outcome"] == "rescued"
    assert attrs(cut)["error.type"] and cut.status.status_code is StatusCode.ERROR
    assert attrs(rest)["tierlm.attempt.outcome"] == "ok"
    assert attrs(root)["tierlm.fallback"] is True and attrs(root)["tierlm.backend"] == "rest"


def test_a_cascade_escalation_is_an_escalated_attempt_then_the_stronger_one() -> None:
    with FaultyUpstream() as up:
        s = keyed(
            [
                backend("small", up.add("small", Scenario(tokens=4))),
                backend("big", up.add("big", Scenario(tokens=6))),
            ],
            [{"name": "small", "backends": ["small"]}, {"name": "big", "backends": ["big"]}],
        )
        with traced_gateway(s) as (client, tracing, exporter):
            r = ask(client, tierlm={"cascade": {"threshold": 1.0}})
            assert r.status_code == 200, r.text
            assert r.json()["tierlm"]["backend"] == "big"
            root, (small, big) = tree(spans(tracing, exporter))
    assert attrs(small)["tierlm.attempt.outcome"] == "escalated"
    assert attrs(small)["tierlm.judge.decision"] == "escalate"
    assert small.status.status_code is StatusCode.UNSET  # it answered; the judge sent it on
    assert attrs(big)["tierlm.attempt.outcome"] == "ok"
    assert attrs(root)["tierlm.escalated"] is True


def test_an_embeddings_request_is_an_embeddings_span_and_its_upstream_attempt() -> None:
    with fake_openai_upstream() as up:
        url = up.state.url + "/v1"
        s = keyed(
            [backend("vec", url, embeddings=True, price={"input": 1.0, "output": 0.0})],
            [{"name": "site", "backends": ["vec"]}],
            embeddings={"embedder": "hashed"},
        )
        with traced_gateway(s) as (client, tracing, exporter):
            r = client.post(
                "/v1/embeddings",
                json={"model": "vec", "input": ["alpha beta", "gamma"]},
                headers={"traceparent": TRACEPARENT, "authorization": f"Bearer {USER_KEY}"},
            )
            assert r.status_code == 200, r.text
            root, (attempt,) = tree(spans(tracing, exporter))
        sent = [r["headers"].get("traceparent") for r in up.state.requests]
    assert root.name == "embeddings vec" and root.kind is SpanKind.SERVER
    assert root.parent is not None and f"{root.parent.span_id:016x}" == CLIENT_SPAN
    assert attrs(root)["gen_ai.operation.name"] == "embeddings"
    a = attrs(attempt)
    assert attempt.name == "embeddings vec-model"
    assert a["gen_ai.operation.name"] == "embeddings" and a["tierlm.attempt.outcome"] == "ok"
    assert a["gen_ai.usage.input_tokens"] > 0 and a["tierlm.cost_usd"] > 0
    assert attempt.context is not None
    assert sent == [f"00-{TRACE_ID}-{attempt.context.span_id:016x}-01"]


def test_consensus_members_are_parallel_attempt_spans() -> None:
    with FaultyUpstream() as up:
        s = keyed(
            [
                backend("one", up.add("one", Scenario(tokens=4))),
                backend("two", up.add("two", Scenario(tokens=4))),
            ],
            [{"name": "site", "backends": ["one", "two"]}],
        )
        with traced_gateway(s) as (client, tracing, exporter):
            r = ask(client, tierlm={"consensus": 2})
            assert r.status_code == 200, r.text
            root, kids = tree(spans(tracing, exporter))
    assert sorted(attrs(k)["tierlm.backend"] for k in kids) == ["one", "two"]
    decisions = sorted(attrs(k)["tierlm.judge.decision"] for k in kids)
    assert decisions == ["majority", "outvoted"]
    assert {attrs(k)["tierlm.attempt.outcome"] for k in kids} == {"ok"}
    assert attrs(root)["tierlm.fallback"] is False


SECRET = "hunter2-Zq8vR4"
CARD = "4111 1111 1111 1111"
EMAIL = "jane.doe@example.org"


def _texts(span: ReadableSpan) -> list[str]:
    """Everything a span carries as text: name, attributes, events, status."""
    out = [span.name, span.status.description or ""]
    for source in (span.attributes or {}, span.resource.attributes):
        for k, v in source.items():
            out += [str(k), str(v)]
    for ev in span.events:
        out.append(ev.name)
        for k, v in (ev.attributes or {}).items():
            out += [str(k), str(v)]
    return out


def test_no_prompt_secret_key_or_echoed_error_ever_reaches_a_span() -> None:
    prompt = f"My password is {SECRET}, card {CARD}, mail {EMAIL}. Summarise my account."
    echo = openai_error(f"cannot process: {prompt}", "invalid_request_error", "bad")
    with FaultyUpstream() as up:
        s = keyed(
            [
                backend("echo", up.add("echo", Scenario("status", status=401, body=echo))),
                backend("answer", up.add("answer", Scenario(tokens=4, text=f"ok {SECRET}"))),
            ],
            [{"name": "site", "backends": ["echo", "answer"]}],
            ledger={"url": "off", "store_prompts": True},
        )
        with traced_gateway(s) as (client, tracing, exporter):
            assert ask(client, prompt).status_code == 200
            streamed = ask(client, prompt, stream=True)
            assert SECRET in streamed.text  # the answer itself does carry it
            found = spans(tracing, exporter)
    assert len(found) == 6  # two requests, two attempts each
    root = next(s for s in found if s.kind is SpanKind.SERVER)
    assert attrs(root)["tierlm.sensitive"] is True
    assert "payment_card" in attrs(root)["tierlm.findings"]  # kinds, never values
    text = "\n".join(t for s in found for t in _texts(s))
    for needle in (SECRET, CARD, CARD.replace(" ", ""), EMAIL, USER_KEY, "Summarise my account"):
        assert needle not in text


def test_with_tracing_off_opentelemetry_is_never_imported() -> None:
    code = f"""
import sys, httpx
from fakes.faulty_upstream import FaultyUpstream, Scenario
from server_util import serve_gateway, settings
with FaultyUpstream() as up:
    s = settings([{{"name": "a", "kind": "openai", "url": up.add("a", Scenario(tokens=3)),
                   "model": "m", "boundary": "site"}}], [{{"name": "t", "backends": ["a"]}}])
    with serve_gateway(s) as url:
        for stream in (False, True):
            r = httpx.post(url + "/v1/chat/completions", headers={{"traceparent": "{TRACEPARENT}"}},
                           json={{"messages": [{{"role": "user", "content": "hi"}}],
                                  "stream": stream}}, timeout=30)
            assert r.status_code == 200, r.text
print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=TESTS,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *sys.path[1:]])
    return env


def test_tracing_without_the_extra_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] == "opentelemetry"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(MissingDependency) as e:
        Tracing(TelemetryConfig(enabled=True, exporter="console"))
    assert str(e.value) == (
        "telemetry (OpenTelemetry traces) needs the optional extra 'otel': "
        "pip install 'tierlm[otel]'"
    )


def test_a_reload_keeps_the_tracing_unless_telemetry_changed() -> None:
    from opentelemetry.sdk.trace.export import SpanExportResult

    s = settings(
        [backend("site", "http://127.0.0.1:9/v1")],
        [{"name": "site", "backends": ["site"]}],
        telemetry=TRACED,
    )
    exporter = InMemorySpanExporter()
    router = Router(s, tracing=Tracing(s.telemetry, exporter))
    same = router.successor(s)
    assert same.tracing is router.tracing
    renamed = s.model_copy(update={"telemetry": TelemetryConfig(**TRACED, service_name="b")})
    other = router.successor(renamed)
    assert other.tracing is not None and other.tracing is not router.tracing
    asyncio.run(router.aclose(keep=[same, other]))
    assert exporter.export(()) is SpanExportResult.SUCCESS  # the successor still traces
    asyncio.run(same.aclose(keep=[other]))
    assert exporter.export(()) is SpanExportResult.FAILURE  # shut down with the last user
    asyncio.run(other.aclose())


def test_candidates_skipped_unsent_are_events_of_the_root_span() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(TelemetryConfig(**TRACED), exporter)
    req = ChatRequest.from_prompt("hello")
    trace = tracing.request(req)
    skipped = AttemptRecord("cloud", "cloud", "external", "circuit_open", "Skipped")
    plan = Plan([Candidate("cloud", "cloud", Boundary.EXTERNAL)], privacy=Privacy.PUBLIC)
    trace.finish(plan, [skipped], None, "no_eligible_backend")
    (root,) = spans(tracing, exporter)
    assert root.kind is SpanKind.INTERNAL and root.name == "chat auto"
    assert [(e.name, dict(e.attributes or {})) for e in root.events] == [
        ("tierlm.skipped", {"tierlm.backend": "cloud", "tierlm.reason": "circuit_open"})
    ]
    assert attrs(root)["tierlm.outcome"] == "no_eligible_backend"
    assert attrs(root)["tierlm.attempts"] == 0 and "tierlm.backend" not in attrs(root)


def test_the_otlp_exporter_needs_an_endpoint() -> None:
    with pytest.raises(ConfigError, match=r"telemetry\.endpoint.*OTEL_EXPORTER_OTLP_ENDPOINT"):
        Tracing(TelemetryConfig(enabled=True))


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver: keeps each POSTed body, answers an empty response."""

    got: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.got.append((self.path, self.headers["content-type"], body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_spans_reach_an_otlp_http_collector_as_protobuf() -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    _Collector.got = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    try:
        with FaultyUpstream() as up:
            s = settings(
                [backend("site", up.add("site", Scenario(tokens=3)))],
                [{"name": "site", "backends": ["site"]}],
                telemetry={"enabled": True, "endpoint": endpoint, "service_name": "edge-1"},
            )
            router = Router(s)
            assert router.chat("say the words").backend == "site"
            assert _Collector.got == []  # batched: nothing sent on the request path
            router.close()  # flushes
    finally:
        server.shutdown()
        server.server_close()
    assert [(p, t) for p, t, _ in _Collector.got] == [("/v1/traces", "application/x-protobuf")]
    req = ExportTraceServiceRequest.FromString(_Collector.got[0][2])
    (resource,) = req.resource_spans
    service = {a.key: a.value.string_value for a in resource.resource.attributes}
    assert service["service.name"] == "edge-1"
    got = {s.name: s for scope in resource.scope_spans for s in scope.spans}
    assert set(got) == {"chat auto", "chat site-model"}
    root, attempt = got["chat auto"], got["chat site-model"]
    assert root.kind == root.SPAN_KIND_INTERNAL  # from the library
    assert attempt.kind == attempt.SPAN_KIND_CLIENT and attempt.parent_span_id == root.span_id
    usage = {a.key: a.value.int_value for a in attempt.attributes if "usage" in a.key}
    assert usage == {"gen_ai.usage.input_tokens": 3, "gen_ai.usage.output_tokens": 3}
