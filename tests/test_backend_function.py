"""The in-memory ``function`` backend: sync, async and generator callables, tools, usage,
errors, and the Router using it from YAML (``function: "module:callable"``) and from Python."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from server_util import settings
from tierlm import Router
from tierlm.backends import create_backend
from tierlm.backends.base import collect
from tierlm.backends.function import FunctionBackend, FunctionInfo, tool_call
from tierlm.cli.audit import register
from tierlm.config import load_settings
from tierlm.config.backends import FunctionConfig
from tierlm.errors import AllAttemptsFailed, BackendUnavailable, ConfigError, RateLimited
from tierlm.execute import RetryPolicy
from tierlm.execute.streams import estimate_usage
from tierlm.types import Boundary, ChatRequest, ChatResponse, Message, StreamEvent, ToolCall, Usage

HI = ChatRequest.from_prompt("say something nice")


def echo(request: ChatRequest, info: FunctionInfo) -> str:
    return f"{info.backend} heard: {request.messages[-1].text}"


async def _events(b: FunctionBackend, req: ChatRequest = HI) -> list[StreamEvent]:
    return [ev async for ev in b.stream(req)]


async def test_sync_and_async_callables_answer_with_estimated_usage() -> None:
    async def later(request: ChatRequest, info: FunctionInfo) -> str:
        return "later" if not info.stream else "streamed later"

    for fn, text in ((echo, "function heard: say something nice"), (later, "later")):
        resp = await FunctionBackend(fn).complete(HI)
        assert (resp.text, resp.finish_reason, resp.backend) == (text, "stop", "function")
        assert resp.usage == estimate_usage(HI, text) and resp.usage.completion_tokens > 0
    evs = await _events(FunctionBackend(later))
    assert [e.text for e in evs] == ["streamed later", ""]
    assert evs[-1].finish_reason == "stop" and evs[-1].usage == estimate_usage(HI, "streamed later")


async def test_generators_stream_chunk_by_chunk_and_fold_for_complete() -> None:
    def words(request: ChatRequest, info: FunctionInfo) -> Iterator[str]:
        yield from ("one ", "two ", "three")

    async def awords(request: ChatRequest, info: FunctionInfo) -> AsyncIterator[str]:
        for w in ("a", "b"):
            yield w

    b = FunctionBackend(words, name="w", model="words-1")
    evs = await _events(b)
    assert [e.text for e in evs] == ["one ", "two ", "three", ""]
    assert evs[-1].finish_reason == "stop" and evs[-1].usage is not None
    resp = await b.complete(HI)
    assert (resp.text, resp.model, b.calls) == ("one two three", "words-1", 2)
    assert [e.text for e in await _events(FunctionBackend(awords))] == ["a", "b", ""]


async def test_events_of_the_callable_make_the_stream_as_they_are() -> None:
    def cut(request: ChatRequest, info: FunctionInfo) -> Iterator[StreamEvent]:
        yield StreamEvent(text="partial")
        yield StreamEvent(finish_reason="length")

    def broken(request: ChatRequest, info: FunctionInfo) -> Iterator[StreamEvent]:
        yield StreamEvent(text="then silence")  # and no final event, as a broken upstream

    evs = await _events(FunctionBackend(cut))
    assert [(e.text, e.finish_reason, e.usage) for e in evs] == [
        ("partial", None, None),
        ("", "length", None),
    ]
    assert [e.finish_reason for e in await _events(FunctionBackend(broken))] == [None]


async def test_tool_calls_returned_or_yielded() -> None:
    def weather(request: ChatRequest, info: FunctionInfo) -> list[ToolCall]:
        return [tool_call("get_weather", {"city": "Oslo"}, id="call_1")]

    resp = await FunctionBackend(weather).complete(HI)
    assert resp.finish_reason == "tool_calls" and resp.message.content is None
    (call,) = resp.message.tool_calls or []
    assert call.function == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    streamed = await collect(FunctionBackend(weather).stream(HI), model="m")
    assert streamed.message.tool_calls == resp.message.tool_calls
    assert streamed.finish_reason == "tool_calls"

    def two(request: ChatRequest, info: FunctionInfo) -> Iterator[ToolCall]:
        yield tool_call("a", {}, id="c1")
        yield tool_call("b", "{}", id="c2")

    folded = await FunctionBackend(two).complete(HI)
    assert [c.id for c in folded.message.tool_calls or []] == ["c1", "c2"]
    assert folded.finish_reason == "tool_calls"


async def test_a_whole_response_keeps_its_own_usage() -> None:
    def whole(request: ChatRequest, info: FunctionInfo) -> ChatResponse:
        return ChatResponse(
            model="big-1",
            message=Message(role="assistant", content="fine"),
            usage=Usage(prompt_tokens=7, completion_tokens=3),
        )

    resp = await FunctionBackend(whole).complete(HI)
    assert (resp.model, resp.usage) == ("big-1", Usage(prompt_tokens=7, completion_tokens=3))
    final = (await _events(FunctionBackend(whole)))[-1]
    assert (final.usage, final.model) == (resp.usage, "big-1")


async def test_tierlm_errors_are_the_backends_failures() -> None:
    def down(request: ChatRequest, info: FunctionInfo) -> str:
        raise BackendUnavailable("connection refused")

    def limited(request: ChatRequest, info: FunctionInfo) -> Iterator[str]:
        yield "half"
        raise RateLimited("slow down", retry_after=3.0)

    with pytest.raises(BackendUnavailable) as e:
        await FunctionBackend(down, name="site").complete(HI)
    assert e.value.backend == "site"  # named after the backend it failed in
    with pytest.raises(RateLimited) as r:
        await _events(FunctionBackend(limited, name="cloud"))
    assert (r.value.backend, r.value.retry_after) == ("cloud", 3.0)


def test_boundary_is_process_unless_configured() -> None:
    assert FunctionBackend(echo).boundary is Boundary.PROCESS
    assert FunctionBackend(echo, boundary="external").boundary is Boundary.EXTERNAL


def test_router_falls_back_over_function_backends() -> None:
    def down(request: ChatRequest, info: FunctionInfo) -> str:
        raise BackendUnavailable("site is down")

    s = settings(
        [
            {"name": "site", "kind": "function", "function": down, "boundary": "site"},
            {"name": "cloud", "kind": "function", "function": echo, "boundary": "external"},
        ],
        [{"name": "t", "backends": ["site", "cloud"]}],
    )
    with Router(s) as router:
        resp = router.chat("hello there")
        assert (resp.backend, resp.text) == ("cloud", "cloud heard: hello there")
        tries = RetryPolicy().max_retries + 1  # BackendUnavailable is retried first
        assert router.backends["site"].calls == tries  # type: ignore[attr-defined]
        # nothing a policy keeps local may reach the external one: only the site is eligible
        with pytest.raises(AllAttemptsFailed):
            router.chat("hello again", hints={"privacy": "private"})
        assert router.backends["cloud"].calls == 1  # type: ignore[attr-defined]


def test_yaml_names_the_callable_by_import_path(tmp_path: Path) -> None:
    cfg = tmp_path / "tierlm.yaml"
    cfg.write_text(
        "backends:\n"
        "  - {name: f, kind: function, function: 'test_backend_function:echo'}\n"
        "  - {name: g, kind: function, function: 'tierlm.backends.function:echo'}\n"
        "tiers:\n  - {name: t, backends: [f]}\n  - {name: g, backends: [g]}\n"
        "ledger: {url: 'off'}\nrouting: {complexity_method: length}\n"
    )
    with Router(load_settings(cfg, env={})) as router:
        assert router.chat("hi", model="t").text == "f heard: hi"
        assert router.chat("hi there", model="g").text == "hi there"  # tierlm's own echo


@pytest.mark.parametrize(
    ("function", "why"),
    [
        ("no_such_module_xyz:answer", "cannot import no_such_module_xyz:answer"),
        ("test_backend_function:nope", "cannot import test_backend_function:nope"),
        ("test_backend_function:HI", "is a ChatRequest, not callable"),
    ],
)
def test_an_unusable_import_path_names_the_key(function: str, why: str) -> None:
    cfg = FunctionConfig(name="f", function=function)
    with pytest.raises(ConfigError) as e:
        create_backend(cfg)
    assert "config key `backends.f.function`" in str(e.value) and why in str(e.value)


def test_a_malformed_import_path_is_a_validation_error(tmp_path: Path) -> None:
    cfg = tmp_path / "tierlm.yaml"
    cfg.write_text(
        "backends:\n  - {name: f, kind: function, function: 'no colon'}\n"
        "tiers:\n  - {name: t, backends: [f]}\n"
    )
    with pytest.raises(ConfigError, match=r"config key `backends.0.function`: .*module:callable"):
        load_settings(cfg, env={})


def test_posed_beyond_the_process_what_the_callable_got_is_audited(tmp_path: Path) -> None:
    """An external function backend (a callable wrapping some provider's SDK) leaves a trail:
    its attempt's digest is the SHA-256 of the documented encoding of what the callable was
    handed, listed by `tierlm audit sent` and chained; a private request never reaches it."""
    handed: list[bytes] = []

    def cloud(request: ChatRequest, info: FunctionInfo) -> str:
        got = {"info": asdict(info), "request": request.model_dump(mode="json")}
        handed.append(
            json.dumps(got, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        )
        return "from the cloud"

    s = settings(
        [
            {"name": "cloud", "kind": "function", "function": cloud, "boundary": "external"},
            {"name": "local", "kind": "function", "function": echo},
        ],
        [{"name": "t", "backends": ["cloud", "local"]}],
        data_dir=str(tmp_path),
        ledger={"url": f"sqlite:///{tmp_path / 'ledger.sqlite3'}"},
    )
    with Router(s) as router:
        assert router.chat("hello there").backend == "cloud"
        assert router.chat("my secret", hints={"privacy": "private"}).backend == "local"
        assert router.backends["cloud"].calls == 1  # type: ignore[attr-defined]
        ledger = router.accounting.ledger
        ledger.flush()
        (sent,) = handed
        digest = hashlib.sha256(sent).hexdigest()
        assert [(r.backend, r.digest) for r in ledger.audit_list()] == [("cloud", digest)]
        assert ledger.audit_verify().ok
    cfg = tmp_path / "tierlm.yaml"
    cfg.write_text(f"data_dir: {tmp_path}\n")
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["audit", "sent", "--config", str(cfg), "--json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines() if line.strip()]
    assert [(r["backend"], r["boundary"], r["digest"]) for r in rows] == [
        ("cloud", "external", digest)
    ]
