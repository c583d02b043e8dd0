"""The in-process transformers backend, on a tiny randomly initialised Llama built here.

The model and its tokenizer are made at test time and saved with ``save_pretrained`` (no hub):
a character-level tokenizer with a chat template, and a 2-layer Llama with random weights,
so generation is nonsense but deterministic under greedy decoding.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tierlm.backends import create_backend
from tierlm.backends.base import collect
from tierlm.backends.transformers import TransformersBackend
from tierlm.config.backends import TransformersConfig
from tierlm.errors import InsufficientMemory, MissingDependency, ModelNotFound
from tierlm.types import ChatRequest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
SPECIAL = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    path = tmp_path_factory.mktemp("tiny-llama")
    words = SPECIAL + [chr(c) for c in range(32, 127)]
    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>"
    )
    tok.chat_template = TEMPLATE
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=len(words),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _backend(path: Path | str, **kw: object) -> TransformersBackend:
    b = create_backend(TransformersConfig(name="hf", model=str(path), **kw))
    assert isinstance(b, TransformersBackend)
    return b


async def test_complete_and_stream_agree(tiny_model: Path) -> None:
    b = _backend(tiny_model)
    h = await b.health()
    assert h.ok and h.loaded is False and h.memory_needed_gb is not None
    req = ChatRequest.from_prompt("hello", max_tokens=12, temperature=0)
    try:
        whole = await b.complete(req)
        events = [e async for e in b.stream(req)]
        assert (await b.health()).loaded is True
    finally:
        await b.aclose()
    prompt_len = len("<|user|>hello<|assistant|>")  # one token per character here
    assert whole.usage.prompt_tokens == prompt_len
    assert 0 < whole.usage.completion_tokens <= 12
    assert whole.finish_reason == ("length" if whole.usage.completion_tokens == 12 else "stop")
    assert whole.model == str(tiny_model) and whole.backend == "hf"
    assert len(events) > 2  # really streamed, piece by piece
    assert "".join(e.text for e in events) == whole.text
    assert events[-1].finish_reason == whole.finish_reason
    assert events[-1].usage == whole.usage


async def test_abandoned_stream_stops_generation(tiny_model: Path) -> None:
    b = _backend(tiny_model)
    try:
        gen = b.stream(ChatRequest.from_prompt("hi", max_tokens=200, temperature=0))
        first = await anext(gen)
        assert first.text
        await gen.aclose()  # the worker sees the stop event at its next token
        again = await b.complete(ChatRequest.from_prompt("hi", max_tokens=3))
        assert 0 < again.usage.completion_tokens <= 3  # the backend answers again
    finally:
        await b.aclose()


async def test_prompt_tools_shape(tiny_model: Path) -> None:
    """A random model will not call tools; the answer must still be a well-formed message."""
    b = _backend(tiny_model)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    try:
        resp = await b.complete(ChatRequest.from_prompt("x", max_tokens=4, tools=[tool]))
    finally:
        await b.aclose()
    assert resp.message.tool_calls is None and isinstance(resp.text, str)


async def test_models_dir_missing_model_and_memory(tiny_model: Path, tmp_path: Path) -> None:
    b = TransformersBackend(
        TransformersConfig(name="hf", model=tiny_model.name),
        models_dir=tiny_model.parent,
    )
    assert b.model_path() == tiny_model
    missing = _backend(tmp_path / "nothing")
    with pytest.raises(ModelNotFound):
        await missing.complete(ChatRequest.from_prompt("x"))
    assert (await missing.health()).ok is False
    tiny_limit = _backend(tiny_model, memory_limit_gb=1e-6)
    with pytest.raises(InsufficientMemory, match="needs"):
        await collect(tiny_limit.stream(ChatRequest.from_prompt("x")), model="x")


async def test_missing_extra(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    b = _backend(tiny_model)
    with pytest.raises(MissingDependency, match=r"pip install 'tierlm\[transformers\]'"):
        await b.complete(ChatRequest.from_prompt("x"))
    assert json.loads((tiny_model / "config.json").read_text())["model_type"] == "llama"
