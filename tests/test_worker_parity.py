"""The two llama.cpp engines answer alike for the same configuration.

- Real llama.cpp in both (llama-cpp-python in process, ``llama-server`` as the worker) on the
  shared SmolLM2 with the preset's sampling (repeat penalty 1.1): greedy answers are the same
  text, and so are sampled ones drawn with the same seed. Before, the worker counted the
  prompt in the repeat penalty's window and used flash attention while the module did
  neither, and the answers to these prompts differed.
- The body the worker backend sends (captured by a fake ``llama-server`` that answers with
  the JSON it received) carries every sampling setting: the configured ones, the engine
  defaults for the rest (llama-server's own differ: temperature 0.8), the request's over both.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import SMOLLM2
from tierlm.backends.llama_cpp import LlamaCppBackend
from tierlm.backends.llama_worker import LlamaWorkerBackend
from tierlm.config.backends import LLAMA_SAMPLING_DEFAULTS, LlamaCppConfig
from tierlm.config.presets import SMOLLM2_SAMPLING
from tierlm.llama_runtime import find_server, server_command
from tierlm.types import ChatRequest

# Prompts whose greedy answers differed between the engines before (bench_worker_quality.py).
PROMPTS = ["What is the capital of France?", "What is 2 + 2?", "What is the capital of Spain?"]

_FAKE_SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, data):
        raw = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self):
        self.reply({"status": "ok"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"])).decode()
        message = {"role": "assistant", "content": body}
        self.reply({"id": "1", "object": "chat.completion", "model": "m",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

HTTPServer(("127.0.0.1", int(sys.argv[sys.argv.index("--port") + 1])), Handler).serve_forever()
"""


def _cfg(worker: bool, **kw: Any) -> LlamaCppConfig:
    return LlamaCppConfig(
        name="tiny",
        model=str(SMOLLM2),
        n_ctx=512,
        threads=1,
        worker=worker,
        keep_alive=0,
        **{"sampling": SMOLLM2_SAMPLING, **kw},
    )


async def _answers(backend: LlamaCppBackend, **kw: Any) -> list[str]:
    out = []
    for prompt in PROMPTS:
        resp = await backend.complete(ChatRequest.from_prompt(prompt, max_tokens=32, **kw))
        out.append(resp.text)
    return out


async def test_both_engines_answer_the_same() -> None:
    binary = find_server()
    if binary is None:
        pytest.fail("llama-server is not installed: run ./scripts/setup")
    local = LlamaCppBackend(_cfg(False))
    worker = LlamaWorkerBackend(_cfg(True), SMOLLM2.parent, binary)
    try:
        for kw in ({"temperature": 0}, {"seed": 3}):
            mine, theirs = await _answers(local, **kw), await _answers(worker, **kw)
            assert all(mine), kw
            assert mine == theirs, kw
        import llama_cpp

        flash = local._idle[0].context_params.flash_attn_type
        assert flash == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED  # as in the worker
    finally:
        await local.aclose()
        await worker.aclose()


@pytest.fixture
def fake_server(tmp_path: Path) -> Path:
    """A ``llama-server`` stand-in that answers a chat request with the body it received."""
    path = tmp_path / "llama-server"
    path.write_text(f"#!{sys.executable}\n{_FAKE_SERVER}")
    path.chmod(0o755)
    return path


async def test_the_worker_sends_every_sampling_setting(fake_server: Path) -> None:
    cfg = _cfg(True, sampling={"temperature": 0.3, "repeat_penalty": 1.15})
    worker = LlamaWorkerBackend(cfg, SMOLLM2.parent, fake_server)
    try:
        sent = json.loads((await worker.complete(ChatRequest.from_prompt("Hi"))).text)
        expected = {**LLAMA_SAMPLING_DEFAULTS, "temperature": 0.3, "repeat_penalty": 1.15}
        assert {k: sent.get(k) for k in expected} == expected
        req = ChatRequest.from_prompt("Hi", temperature=0, top_k=5, seed=7, extra={"min_p": 0.1})
        sent = json.loads(await asyncio.to_thread(worker.complete_blocking, req))
        assert (sent["temperature"], sent["top_k"], sent["seed"], sent["min_p"]) == (0, 5, 7, 0.1)
        assert (sent["top_p"], sent["repeat_penalty"]) == (0.95, 1.15)
    finally:
        await worker.aclose()
    # the in-process engine samples with the same settings
    local = LlamaCppBackend(cfg)
    assert {k: local._kwargs(ChatRequest.from_prompt("Hi"))[k] for k in expected} == expected


def test_the_worker_gets_the_configured_flash_attention() -> None:
    for on in (True, False):
        cmd = server_command(Path("llama-server"), SMOLLM2, 1, _cfg(True, flash_attn=on), 1)
        assert cmd[cmd.index("--flash-attn") + 1] == ("on" if on else "off")
