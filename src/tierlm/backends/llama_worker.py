"""The local llama.cpp model in a supervised worker process: llama.cpp's own ``llama-server``.

The gateway never loads the model into its own process. :class:`LlamaWorkerBackend` keeps
the in-process backend's contract (model resolution, the RAM check before a start,
``max_concurrency`` slots with ``max_queue`` waiting, ``keep_alive`` unloading, tools in the
prompt with a JSON-schema-constrained reply) and runs the model in a ``llama-server`` started
by a :class:`~tierlm.supervisor.WorkerSupervisor`:

- the worker listens on a free loopback port with ``max_concurrency`` parallel slots
  (continuous batching: concurrent requests are decoded together, not queued) and reuses the
  KV cache of a shared prompt prefix;
- requests go through the OpenAI-compatible adapter (:class:`OpenAIBackend`, one per worker
  generation, so no pooled connection outlives its worker);
- a worker that dies (any signal, an OOM kill, an abort) turns every attempt in flight into
  :class:`BackendUnavailable` ("llama.cpp worker exited with SIGSEGV ..."), so the executor
  falls over as for any backend; the supervisor restarts it with backoff; attempts while it
  restarts fail at once (and, repeated, open the executor's breaker); ``health`` reports
  ``ok: false`` meanwhile and the worker's state under ``worker``;
- every sampling setting goes in the request body (llama-server's own defaults differ from
  the in-process engine's), so both engines answer alike (see :mod:`.llama_cpp`);
- a worker idle for ``keep_alive`` seconds is stopped (its memory returns to the system) and
  started again by the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierlm.backends.base import BackendHealth, dumps
from tierlm.backends.http_errors import ErrorContext
from tierlm.backends.llama_cpp import LlamaCppBackend
from tierlm.backends.openai_compat import OpenAIBackend
from tierlm.config.backends import LlamaCppConfig, OpenAIConfig
from tierlm.errors import BackendError, BackendTimeout, BackendUnavailable
from tierlm.llama_runtime import server_command, worker_env
from tierlm.supervisor import WorkerDown, WorkerSupervisor, urlopen_direct

if TYPE_CHECKING:
    from tierlm.types import ChatRequest, ChatResponse, StreamEvent

_EXIT_GRACE = 2.0  # seconds to wait for a worker's exit after its connection dropped


class LlamaWorkerBackend(LlamaCppBackend):
    """``kind: llama_cpp`` with its model in a supervised ``llama-server`` process."""

    def __init__(self, config: LlamaCppConfig, models_dir: Path, binary: Path) -> None:
        super().__init__(config, models_dir)
        self.binary = binary
        self.slots = config.max_concurrency
        self.supervisor = WorkerSupervisor(
            config.name,
            lambda port: server_command(binary, self.model_path(), port, config, self.slots),
            env=worker_env(config),
        )
        self._client: tuple[int, OpenAIBackend] | None = None
        self._load_timeout = config.load_timeout

    # -- the worker -------------------------------------------------------------------------
    def memory_needed_bytes(self) -> int:
        from tierlm.gguf import estimate_memory_bytes

        return estimate_memory_bytes(self.model_path(), self.config.n_ctx * self.slots)

    async def _client_for(self, generation: int) -> OpenAIBackend:
        cur = self._client
        if cur is not None and cur[0] == generation:
            return cur[1]
        client = self._adapter()
        self._client = (generation, client)
        if cur is not None:
            await cur[1].aclose()  # its connections went to a worker that is gone
        return client

    def _adapter(self) -> OpenAIBackend:
        """The OpenAI-compatible adapter for the current worker (prompt tools constrained by
        the worker's JSON-schema grammar)."""
        cfg = OpenAIConfig(
            name=self.name,
            model=self.model,
            url=self.supervisor.base_url + "/v1",
            boundary=self.boundary,
            tools=False,
            timeouts=self.config.timeouts,
            constrain_tools=self._tool_grammar(),
            keepalive_timeout=0.0,
        )
        return OpenAIBackend(cfg)

    async def _ready(self, request_id: str | None = None) -> tuple[int, OpenAIBackend]:
        """The current worker's generation and client, starting the worker if needed."""
        sup = self.supervisor
        if sup.state != "ready":
            if sup.state == "stopped":
                self.ready_to_load()
            try:
                await asyncio.to_thread(sup.wait_ready, self._load_timeout)
            except WorkerDown as e:
                raise BackendUnavailable(
                    f"llama.cpp {e}", backend=self.name, request_id=request_id
                ) from None
        gen = sup.generation
        return gen, await self._client_for(gen)

    async def _explain(self, generation: int, e: BackendError) -> BackendError:
        """``e``, or :class:`BackendUnavailable` naming the exit when the worker died."""
        if not isinstance(e, BackendUnavailable | BackendTimeout) and e.upstream_status:
            return e  # the worker answered with an HTTP error: it is alive
        wait = 0.0 if isinstance(e, BackendTimeout) else _EXIT_GRACE
        died = await asyncio.to_thread(self.supervisor.died, generation, wait)
        if died is None:
            return e
        return BackendUnavailable(
            f"llama.cpp worker exited with {died}; restarting",
            backend=self.name,
            request_id=e.request_id,
        )

    def _with_defaults(self, request: ChatRequest) -> ChatRequest:
        """The backend's configured sampling and ``max_tokens`` where the request is silent."""
        update: dict[str, Any] = {}
        extra = dict(request.extra)
        for name, value in self._sampling.items():
            if name in ("temperature", "top_p", "top_k"):
                if getattr(request, name) is None:
                    update[name] = value
            else:
                extra.setdefault(name, value)
        if request.max_tokens is None:
            update["max_tokens"] = self.max_tokens()
        update["extra"] = extra
        return request.model_copy(update=update)

    # -- generation -------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _attempt(self, request: ChatRequest) -> AsyncIterator[OpenAIBackend]:
        """A slot and the ready worker's client for one attempt; a failure of the worker
        during it becomes :class:`BackendUnavailable` naming the exit."""
        sem = await self._take_slot()
        try:
            gen, client = await self._ready(request.request_id)
            try:
                yield client
            except BackendError as e:
                explained = await self._explain(gen, e)
                if explained is e:
                    raise
                raise explained from e
        finally:
            self._give_slot(sem)

    async def complete(self, request: ChatRequest) -> ChatResponse:
        async with self._attempt(request) as client:
            start, tokens = self.meter.begin(), 0
            try:
                out = await client.complete(self._with_defaults(request))
                tokens = out.usage.completion_tokens
            finally:
                self.meter.end(start, tokens)
        out.model = self.model
        return out

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        async with self._attempt(request) as client:
            start, ended = self.meter.begin(), False
            try:
                async for ev in client.stream(self._with_defaults(request)):
                    if ev.model:
                        ev.model = self.model
                    if ev.usage is not None and not ended:  # the end: measured now
                        ended = True
                        self.meter.end(start, ev.usage.completion_tokens)
                    yield ev
            finally:
                if not ended:
                    self.meter.end(start, 0)

    def complete_blocking(self, request: ChatRequest) -> str:
        """Answer from the calling thread (signals that rate a request with this model)."""
        if self.supervisor.state != "ready":
            self.ready_to_load()
        try:
            self.supervisor.wait_ready(self._load_timeout)
        except WorkerDown as e:
            raise BackendUnavailable(f"llama.cpp {e}", backend=self.name) from None
        adapter = self._adapter()
        body = adapter.body(self._with_defaults(request), stream=False)
        req = urllib.request.Request(
            self.supervisor.base_url + "/v1/chat/completions",
            data=dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        try:
            with urlopen_direct(req, timeout=self.config.timeouts.total) as r:
                data = json.load(r)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise BackendUnavailable(f"llama.cpp worker: {e}", backend=self.name) from None
        return adapter.parse_answer(data, ErrorContext(self.name)).text

    # -- lifecycle and health ---------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self.supervisor.state == "ready"

    def unload(self) -> int:
        """Stop the worker now (keep-alive, shutdown); returns 1 if one was running."""
        running = self.supervisor.state != "stopped"
        self.supervisor.stop()
        return int(running)

    async def health(self) -> BackendHealth:
        h = await super().health()
        snap = self.supervisor.snapshot()
        h.worker = {**snap, "binary": str(self.binary)}
        if snap["state"] == "backoff":
            h.ok = False
            h.detail = (
                f"worker exited with {snap['last_exit']}; restarting in {snap['retry_in_s']} s"
            )
        return h

    async def aclose(self) -> None:
        self._cancel_unload()
        await asyncio.to_thread(self.supervisor.stop)
        if self._client is not None:
            await self._client[1].aclose()
            self._client = None
        self._pool.shutdown(wait=False, cancel_futures=True)
