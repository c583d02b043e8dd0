"""The local model in a supervised ``llama-server`` worker (real llama.cpp, SmolLM2).

- The backend answers, streams, batches concurrent requests in parallel slots, and keeps
  tool calls (tools in the prompt, reply constrained by a JSON-schema grammar) working.
- Through the gateway (tiny worker + a fake site upstream): the worker killed with SIGSEGV or
  SIGKILL mid-stream and mid-load costs the attempt in flight, not the gateway; the next
  requests are served; the supervisor brings the worker back; ``/health`` and ``/metrics``
  report it; a worker that keeps crashing opens the breaker.

Waits are on the supervisor's state and on the HTTP output, never on sleeps. Mid-load is made
deterministic by a wrapper that stops the worker before it execs llama-server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import SMOLLM2
from fakes import serve
from fakes.openai_server import make_app as upstream_app
from server_util import settings as make_settings
from server_util import upstream_backend
from test_tools import GET_WEATHER
from tierlm.backends import create_backend
from tierlm.backends.llama_worker import LlamaWorkerBackend
from tierlm.backends.registry import parse_backend
from tierlm.errors import BackendUnavailable
from tierlm.execute.breaker import BreakerState
from tierlm.llama_runtime import find_server
from tierlm.router import Router
from tierlm.server import create_app
from tierlm.supervisor import Backoff, WorkerSupervisor
from tierlm.types import ChatRequest

LONG = "Write a long story about a water pump in a small village."


@pytest.fixture(scope="module")
def server_binary() -> Path:
    found = find_server()
    if found is None:
        pytest.fail("llama-server is not installed: run ./scripts/setup")
    return found


def _tiny(**kw: Any) -> dict[str, Any]:
    return {
        "name": "tiny",
        "kind": "llama_cpp",
        "model": str(SMOLLM2),
        "n_ctx": 512,
        "threads": 2,
        "max_concurrency": 2,
        "keep_alive": 0,
        **kw,
    }


def _wait(predicate: Any, timeout: float = 30.0, every: float = 0.005) -> None:
    """Wait until ``predicate()`` holds (an observable state, checked every few ms)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(every)


def _tiny_answers(c: httpx.Client) -> None:
    """Wait until routing sends requests to tiny again (the gateway's health cache notices
    the worker is back within its time to live)."""
    _wait(lambda: _ask(c).headers["x-tierlm-backend"] == "tiny", every=0.1)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "gone"


# -- the backend --------------------------------------------------------------------------------
async def test_worker_answers_streams_and_batches(server_binary: Path) -> None:
    backend = create_backend(parse_backend(_tiny()))
    assert isinstance(backend, LlamaWorkerBackend)
    sup = backend.supervisor
    try:
        req = ChatRequest.from_prompt("What is the capital of France?", max_tokens=8, seed=1)
        resp = await backend.complete(req)
        assert resp.text and resp.usage.completion_tokens > 0 and resp.backend == "tiny"
        assert sup.state == "ready" and sup.pid is not None and sup.pid != os.getpid()
        assert backend._loaded == 0  # nothing loaded into this process
        events = [ev async for ev in backend.stream(req)]
        assert "".join(e.text for e in events) and events[-1].finish_reason in ("stop", "length")
        assert events[-1].usage is not None and events[-1].usage.prompt_tokens > 0
        # two requests at once, one per slot
        both = await asyncio.gather(*(backend.complete(req) for _ in range(2)))
        assert all(r.text for r in both)
        # the blocking path (complexity_method: llm rates requests with the tiny model)
        assert await asyncio.to_thread(backend.complete_blocking, req)
        health = await backend.health()
        assert health.ok and health.loaded and health.worker is not None
        assert health.worker["state"] == "ready" and health.worker["crashes"] == 0
    finally:
        await backend.aclose()
    assert sup.state == "stopped" and sup.pid is not None and _proc_state(sup.pid) == "gone"


async def test_prompt_tools_through_the_worker(server_binary: Path) -> None:
    backend = create_backend(parse_backend(_tiny()))
    try:
        req = ChatRequest.from_prompt(
            "What is the weather in Paris?", max_tokens=48, temperature=0, tools=[GET_WEATHER]
        )
        resp = await backend.complete(req)
        assert resp.finish_reason == "tool_calls" and resp.message.tool_calls
        call = resp.message.tool_calls[0]
        assert call.function["name"] == "get_weather"
        assert "city" in json.loads(call.function["arguments"])
    finally:
        await backend.aclose()


async def test_a_crash_in_flight_is_backend_unavailable(server_binary: Path) -> None:
    backend = create_backend(parse_backend(_tiny()))
    assert isinstance(backend, LlamaWorkerBackend)
    try:
        req = ChatRequest.from_prompt(LONG, max_tokens=400, temperature=0)
        stream = backend.stream(req)
        first = await anext(stream)
        assert first.text
        backend.supervisor.kill(signal.SIGSEGV)
        with pytest.raises(BackendUnavailable, match="worker exited with SIGSEGV"):
            async for _ in stream:
                pass
        assert await asyncio.to_thread(backend.supervisor.wait_state, "ready", 60, after=1)
        assert (await backend.complete(ChatRequest.from_prompt("Hi", max_tokens=4))).text
    finally:
        await backend.aclose()


# -- through the gateway ------------------------------------------------------------------------
@pytest.fixture
def gateway(server_binary: Path, tmp_path: Path) -> Iterator[tuple[str, WorkerSupervisor, Router]]:
    """The gateway over tiny (the worker) then site (a fake upstream that always answers)."""
    wrapper = tmp_path / "llama-server"
    gate = tmp_path / "pause"
    # stops itself before exec while the gate file exists: a worker caught mid-load
    wrapper.write_text(
        f'#!/bin/sh\n[ -e "{gate}" ] && kill -STOP $$\nexec "{server_binary}" "$@"\n'
    )
    wrapper.chmod(0o755)
    os.environ["TIERLM_LLAMA_SERVER"] = str(wrapper)
    try:
        with serve(upstream_app()) as upstream:
            s = make_settings(
                [_tiny(), upstream_backend("site", upstream, "plain")],
                [{"name": "tiny", "backends": ["tiny"]}, {"name": "site", "backends": ["site"]}],
            )
            router = Router(s)
            backend = router.backends["tiny"]
            assert isinstance(backend, LlamaWorkerBackend)
            with serve(create_app(router), lifespan="on", start_within=60, grace=2) as url:
                yield url, backend.supervisor, router
            asyncio.run(router.aclose())
    finally:
        del os.environ["TIERLM_LLAMA_SERVER"]


def _ask(c: httpx.Client, prompt: str = "What is the capital of France?") -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": prompt}], "max_tokens": 8}
    return c.post("/v1/chat/completions", json=body)


def _stream_and_kill(c: httpx.Client, sup: WorkerSupervisor, sig: int) -> list[str]:
    """Stream a long answer; kill the worker at the first content chunk; return the lines."""
    body = {
        "model": "auto",
        "stream": True,
        "max_tokens": 400,
        "messages": [{"role": "user", "content": LONG}],
    }
    lines: list[str] = []
    with c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["x-tierlm-backend"] == "tiny"
        for line in r.iter_lines():
            if not line:
                continue
            lines.append(line)
            if len(lines) == 2:  # the role chunk, then the first content
                sup.kill(sig)
    return lines


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL])
def test_worker_killed_mid_stream(gateway: tuple[str, WorkerSupervisor, Router], sig: int) -> None:
    url, sup, _ = gateway
    with httpx.Client(base_url=url, timeout=60) as c:
        assert _ask(c).headers["x-tierlm-backend"] == "tiny"  # the worker is up
        gen = sup.generation
        lines = _stream_and_kill(c, sup, sig)
        # the stream ends properly: the rescue's continuation or an in-band error, then DONE
        assert lines[-1] == "data: [DONE]"
        last = json.loads(lines[-2][len("data: ") :])
        assert last.get("error") or last["choices"][0]["finish_reason"] or last.get("usage")
        assert sup.crashes == 1 and sup.last_exit.startswith(signal.Signals(sig).name)
        served = [_ask(c) for _ in range(3)]  # the gateway survived: the next ones are served
        assert [r.status_code for r in served] == [200, 200, 200]
        assert sup.wait_state("ready", 60, after=gen)  # the worker is back
        _tiny_answers(c)
        # /health shows the worker (cached for a few seconds); /metrics is live
        assert c.get("/health").json()["backends"]["tiny"]["worker"]["state"]
        metrics = c.get("/metrics").text
        assert 'tierlm_worker_restarts_total{backend="tiny"} 1' in metrics
        assert 'tierlm_worker_crashes_total{backend="tiny"} 1' in metrics
        assert 'tierlm_worker_up{backend="tiny"} 1' in metrics


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL])
def test_worker_killed_mid_load(
    gateway: tuple[str, WorkerSupervisor, Router], sig: int, tmp_path: Path
) -> None:
    url, sup, _ = gateway
    (tmp_path / "pause").touch()
    with httpx.Client(base_url=url, timeout=60) as c:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(_ask, c)
            assert sup.wait_state("starting", 30)
            pid = sup.pid
            assert pid is not None
            _wait(lambda: _proc_state(pid) == "T")  # stopped before it loaded the model
            (tmp_path / "pause").unlink()
            os.kill(pid, sig)
            os.kill(pid, signal.SIGCONT)
            r = pending.result(timeout=60)
        # the attempt in flight failed; the executor retried tiny (restarted) or fell over to site
        assert r.status_code == 200 and r.headers["x-tierlm-backend"] in ("tiny", "site")
        assert sup.crashes == 1 and sup.last_exit.startswith(signal.Signals(sig).name)
        assert sup.wait_state("ready", 60, after=1)
        _tiny_answers(c)


def test_a_worker_that_keeps_crashing_opens_the_breaker(
    gateway: tuple[str, WorkerSupervisor, Router],
) -> None:
    url, sup, router = gateway
    wrapper = Path(os.environ["TIERLM_LLAMA_SERVER"])
    wrapper.write_text("#!/bin/sh\nkill -SEGV $$\n")  # every start crashes at once
    pinned = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    with httpx.Client(base_url=url, timeout=60) as c:
        first = c.post("/v1/chat/completions", json=pinned)
        assert first.status_code == 503
        assert "llama.cpp worker exited with SIGSEGV" in first.json()["error"]["message"]
        # each request's attempts (retries included) count; the breaker opens within a few
        for _ in range(5):
            if router.executor.breakers["tiny"].state is BreakerState.OPEN:
                break
            assert c.post("/v1/chat/completions", json=pinned).status_code == 503
        assert router.executor.breakers["tiny"].state is BreakerState.OPEN
        refused = c.post("/v1/chat/completions", json=pinned)
        assert refused.status_code == 503 and "circuit open" in refused.json()["error"]["message"]
        auto = _ask(c)  # routed requests go on to the next tier
        assert auto.status_code == 200 and auto.headers["x-tierlm-backend"] == "site"
        assert sup.crashes >= 1 and sup.last_exit.startswith("SIGSEGV")
        assert 'tierlm_worker_up{backend="tiny"} 0' in c.get("/metrics").text
    sup.backoff = Backoff(delay=60)  # the next crash keeps it down while health is read
    assert sup.wait_state("backoff", 30, after=sup.generation)
    health = asyncio.run(router.backends["tiny"].health())
    assert health.ok is False and health.worker is not None
    assert health.worker["state"] == "backoff" and "SIGSEGV" in health.detail


# -- the supervisor alone -----------------------------------------------------------------------
def test_the_worker_dies_with_a_killed_gateway(tmp_path: Path) -> None:
    """SIGKILL of the process that started a worker (no cleanup runs) still ends the worker."""
    import subprocess
    import sys

    code = (
        "import sys, threading\n"
        "from tierlm.supervisor import WorkerSupervisor\n"
        "s = WorkerSupervisor('w', lambda port: ['sleep', '600'])\n"
        "s.ensure_started()\n"
        "assert s.wait_state('starting', 30)\n"
        "print(s.pid, flush=True)\n"
        "threading.Event().wait()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    assert _proc_state(pid) != "gone"
    parent.kill()
    parent.wait()
    parent.stdout.close()
    _wait(lambda: _proc_state(pid) in ("gone", "Z"))


def test_a_worker_that_exits_is_restarted_with_backoff() -> None:
    sup = WorkerSupervisor("w", lambda port: ["sh", "-c", "exit 3"], backoff=Backoff(delay=1.0))
    try:
        sup.ensure_started()
        assert sup.wait_state("backoff", 30, after=1)  # the second start failed as well
        assert sup.crashes >= 2 and sup.last_exit == "exit status 3"
        snap = sup.snapshot()
        assert snap["state"] == "backoff" and snap["restarts"] >= 1 and snap["pid"] is None
        assert sup.backoff.after(1) < sup.backoff.after(3) <= sup.backoff.max_delay
    finally:
        sup.stop()
    assert sup.state == "stopped"
