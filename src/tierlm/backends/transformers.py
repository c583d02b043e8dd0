"""The in-process transformers backend (optional extra ``transformers``).

For users who run safetensors models directly: ``model`` is a model directory on disk (an
absolute path, or a name under the models directory) holding what ``save_pretrained`` wrote.
It runs on the GPU when torch sees one, else on the CPU (``device`` overrides; ``dtype``
picks the weight type). Nothing is imported or loaded until the first
request (or :meth:`TransformersBackend.load`); hub downloads are never attempted.

Streaming is real: ``generate`` runs in a worker thread feeding a ``TextIteratorStreamer``.
A stream that is abandoned, or that passes its stall limit, stops the generation at the
next token. Requests with ``tools`` use prompt-based tool calls (:mod:`tierlm.backends.tools`).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierlm import hostinfo
from tierlm.backends import tools as prompt_tools
from tierlm.backends.base import Backend, BackendHealth, expect_config
from tierlm.config.backends import TransformersConfig
from tierlm.errors import (
    BackendTimeout,
    InsufficientMemory,
    MissingDependency,
    ModelNotFound,
    Overloaded,
    ServerError,
    TierlmError,
)
from tierlm.types import ChatRequest, ChatResponse, FinishReason, Message, StreamEvent, Usage

if TYPE_CHECKING:
    from tierlm.config.settings import BackendConfig, Settings

GIB = 1024**3
DEFAULT_MAX_TOKENS = 256


def _import() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as e:
        raise MissingDependency("the transformers backend", "transformers") from e
    return torch, transformers


def _stop_criteria(event: threading.Event) -> Any:
    """A ``StoppingCriteriaList`` that ends ``generate`` when ``event`` is set."""
    torch, transformers = _import()

    base: Any = transformers.StoppingCriteria

    class _Stop(base):  # type: ignore[misc]
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full(
                (input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device
            )

    return transformers.StoppingCriteriaList([_Stop()])


def _token_streamer(tokenizer: Any, timeout: float) -> Any:
    """A ``TextIteratorStreamer`` that hands on text token by token (the stock one waits for
    a space or newline), holding back only an incomplete UTF-8 sequence."""
    _, transformers = _import()

    base: Any = transformers.TextIteratorStreamer

    class _TokenStreamer(base):  # type: ignore[misc]
        next_tokens_are_prompt: bool
        print_len: int
        token_cache: list[int]

        def put(self, value: Any) -> None:
            if len(value.shape) > 1:
                value = value[0]
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            self.token_cache.extend(value.tolist())
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            if text.endswith("\ufffd"):
                return
            printable = text[self.print_len :]
            self.print_len = len(text)
            if printable:
                self.on_finalized_text(printable)

    return _TokenStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout)


class TransformersBackend(Backend):
    """A causal LM from a local directory, in this process."""

    config: TransformersConfig

    def __init__(self, config: TransformersConfig, models_dir: Path | None = None) -> None:
        super().__init__(config)
        self.models_dir = models_dir
        self._model: Any = None
        self._tok: Any = None
        self._device = "cpu"
        self._load_lock = threading.Lock()
        self._gen_lock = threading.Lock()
        self._waiting = 0

    @classmethod
    def from_settings(cls, config: BackendConfig, settings: Settings | None) -> Backend:
        from tierlm.paths import models_dir

        return cls(expect_config(config, TransformersConfig), models_dir(settings))

    # ------------------------------------------------------------------ loading

    def model_path(self) -> Path:
        p = Path(self.model).expanduser()
        candidates = (
            [p] if p.is_absolute() else [p, *([self.models_dir / p] if self.models_dir else [])]
        )
        for c in candidates:
            if (c / "config.json").is_file():
                return c
        where = ", ".join(str(c) for c in candidates)
        raise ModelNotFound(
            f"no transformers model directory (with config.json) at {where}", backend=self.name
        )

    def memory_needed_bytes(self) -> int:
        """Weights on disk plus 20% for activations and the KV cache."""
        path = self.model_path()
        size = sum(f.stat().st_size for f in path.iterdir() if f.suffix in (".safetensors", ".bin"))
        return int(size * 1.2)

    def load(self) -> None:
        """Import torch/transformers and load the model (idempotent, thread-safe)."""
        with self._load_lock:
            if self._model is not None:
                return
            torch, transformers = _import()
            path = self.model_path()
            needed = self.memory_needed_bytes()
            limit = self.config.memory_limit_gb
            free = hostinfo.memory_available_bytes()
            if needed > free * 0.9 or (limit is not None and needed > limit * GIB):
                raise InsufficientMemory(
                    f"model needs ~{needed / GIB:.2f} GB, {free / GIB:.2f} GB free",
                    backend=self.name,
                )
            device = self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")
            if self.config.threads:
                torch.set_num_threads(self.config.threads)
            tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, dtype=self.config.dtype
            )
            model.to(device)
            model.eval()
            self._tok, self._model, self._device = tok, model, device

    # ------------------------------------------------------------------ generation

    def _inputs(self, req: ChatRequest) -> Any:
        msgs = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text}
            for m in req.messages
        ]
        if getattr(self._tok, "chat_template", None):
            enc = self._tok.apply_chat_template(
                msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant:"
            enc = self._tok(text, return_tensors="pt")
        return enc.to(self._device)

    def _gen_kwargs(self, req: ChatRequest, enc: Any, stop: threading.Event) -> dict[str, Any]:
        max_new = req.max_tokens or self.config.max_tokens or DEFAULT_MAX_TOKENS
        kw: dict[str, Any] = {
            **enc,
            "max_new_tokens": max_new,
            "stopping_criteria": _stop_criteria(stop),
        }
        if req.temperature:
            kw.update(do_sample=True, temperature=req.temperature)
            if req.top_p is not None:
                kw["top_p"] = req.top_p
            if req.top_k is not None:
                kw["top_k"] = req.top_k
        else:
            kw["do_sample"] = False
        if req.stop:
            kw.update(stop_strings=req.stop, tokenizer=self._tok)
        if self._tok.pad_token_id is None:
            kw["pad_token_id"] = self._tok.eos_token_id
        return kw

    def _seed(self, req: ChatRequest) -> None:
        if req.seed is not None:
            import torch

            torch.manual_seed(req.seed)

    def _finish(self, new_ids: list[int], max_new: int) -> FinishReason:
        eos = self._tok.eos_token_id
        if len(new_ids) >= max_new and (not new_ids or new_ids[-1] != eos):
            return "length"
        return "stop"

    def _generate(self, req: ChatRequest) -> tuple[str, Usage, FinishReason]:
        self.load()
        with self._gen_lock:
            import torch

            enc = self._inputs(req)
            kw = self._gen_kwargs(req, enc, threading.Event())
            self._seed(req)
            with torch.inference_mode():
                out = self._model.generate(**kw)
        n_prompt = int(enc["input_ids"].shape[1])
        new_ids = [int(t) for t in out[0][n_prompt:]]
        text = self._tok.decode(new_ids, skip_special_tokens=True)
        return (
            text,
            Usage(prompt_tokens=n_prompt, completion_tokens=len(new_ids)),
            self._finish(new_ids, kw["max_new_tokens"]),
        )

    def _admit(self) -> None:
        if self._waiting >= self.config.max_queue + self.config.max_concurrency:
            raise Overloaded(f"queue full ({self._waiting} waiting)", backend=self.name)

    async def complete(self, request: ChatRequest) -> ChatResponse:
        if request.tools and request.tool_choice != "none":
            plain = prompt_tools.prompt_request(request)
            return prompt_tools.finish_response(await self._complete(plain), request)
        return await self._complete(request)

    async def _complete(self, req: ChatRequest) -> ChatResponse:
        self._admit()
        start = time.perf_counter()
        self._waiting += 1
        try:
            text, usage, finish = await asyncio.to_thread(self._generate, req)
        finally:
            self._waiting -= 1
        return ChatResponse(
            model=self.model,
            message=Message(role="assistant", content=text),
            finish_reason=finish,
            usage=usage,
            backend=self.name,
            latency_ms=(time.perf_counter() - start) * 1000.0,
        )

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        if request.tools and request.tool_choice != "none":
            plain = prompt_tools.prompt_request(request)
            return prompt_tools.finish_stream(self._stream(plain), request)
        return self._stream(request)

    async def _stream(self, req: ChatRequest) -> AsyncIterator[StreamEvent]:
        self._admit()
        self._waiting += 1
        stop = threading.Event()
        try:
            await asyncio.to_thread(self.load)
            torch, _ = _import()
            t = self.config.timeouts
            streamer = _token_streamer(self._tok, max(t.first_token, t.stall))
            holder: dict[str, Any] = {}
            worker = threading.Thread(
                target=self._stream_worker, args=(req, streamer, stop, holder, torch), daemon=True
            )
            worker.start()
            try:
                async for piece in self._pieces(streamer, stop):
                    yield StreamEvent(text=piece, model=self.model)
                await asyncio.to_thread(worker.join)
            finally:
                stop.set()
            if "error" in holder:
                err = holder["error"]
                if isinstance(err, TierlmError):
                    raise err
                raise ServerError(
                    f"generation failed ({type(err).__name__})", backend=self.name
                ) from err
            yield StreamEvent(
                finish_reason=holder["finish"], usage=holder["usage"], model=self.model
            )
        finally:
            stop.set()
            self._waiting -= 1

    async def _pieces(self, streamer: Any, stop: threading.Event) -> AsyncIterator[str]:
        it = iter(streamer)
        while True:
            try:
                piece = await asyncio.to_thread(next, it, None)
            except queue.Empty:
                stop.set()
                raise BackendTimeout("stall timeout while generating", backend=self.name) from None
            if piece is None:
                return
            if piece:
                yield piece

    def _stream_worker(
        self,
        req: ChatRequest,
        streamer: Any,
        stop: threading.Event,
        holder: dict[str, Any],
        torch: Any,
    ) -> None:
        """Runs ``generate`` in its thread, one generation at a time."""
        with self._gen_lock:
            if stop.is_set():  # abandoned while waiting for the model
                streamer.end()
                return
            self._run_streamed(req, streamer, stop, holder, torch)

    def _run_streamed(
        self,
        req: ChatRequest,
        streamer: Any,
        stop: threading.Event,
        holder: dict[str, Any],
        torch: Any,
    ) -> None:
        try:
            enc = self._inputs(req)
            kw = self._gen_kwargs(req, enc, stop)
            self._seed(req)
            with torch.inference_mode():
                out = self._model.generate(**kw, streamer=streamer)
            n_prompt = int(enc["input_ids"].shape[1])
            new_ids = [int(x) for x in out[0][n_prompt:]]
            holder["usage"] = Usage(prompt_tokens=n_prompt, completion_tokens=len(new_ids))
            holder["finish"] = self._finish(new_ids, kw["max_new_tokens"])
        except BaseException as e:  # handed to the consumer, which re-raises it
            holder["error"] = e
            streamer.end()

    # ------------------------------------------------------------------ health

    async def health(self) -> BackendHealth:
        try:
            needed = self.memory_needed_bytes()
        except ModelNotFound as e:
            return BackendHealth(ok=False, detail=e.message, loaded=False)
        free = hostinfo.memory_available_bytes()
        loaded = self._model is not None
        fits = loaded or needed <= free * 0.9
        return BackendHealth(
            ok=fits,
            loaded=loaded,
            models=[self.model],
            loaded_models=[self.model] if loaded else [],
            detail=("loaded" if loaded else "cold (loads on first request)")
            if fits
            else "does not fit in free memory",
            in_flight=self._waiting,
            memory_needed_gb=round(needed / GIB, 3),
            memory_free_gb=round(free / GIB, 2),
        )

    async def aclose(self) -> None:
        with self._load_lock:
            self._model = None
            self._tok = None
