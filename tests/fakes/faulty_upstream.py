"""A misbehaving OpenAI-wire upstream on 127.0.0.1, for the executor's fault-injection suite.

A raw asyncio HTTP/1.1 server (in its own thread) so it can do what well-behaved frameworks
will not: reset a connection before the headers, never answer, cut a chunked body in the
middle, stall silently, send a broken JSON chunk, or end a stream without ``[DONE]``.

Each test registers named scenarios and gets a base URL per name::

    with FaultyUpstream() as up:
        url = up.add("primary", Scenario("status", status=503))   # http://127.0.0.1:P/primary/v1
        ...
        assert up.count("primary") <= 3                           # never hammered

A healthy answer is the words ``w0 w1 ... w{tokens-1}`` (one word a stream chunk, usage
reported). What a scenario does when asked to continue a partial answer (``on_continue``):

- ``continue``: after an assistant turn and the executor's "continue" instruction, it goes on
  from the word after the last one of that turn (a model that follows the instruction);
- ``restart``: it ignores the instruction and answers from the start (most small models);
- ``restart_nearly``: the same, but not word for word (case, punctuation, one word changed);
- ``prefill``: it continues a trailing assistant turn (as llama-server does), and answers a
  "continue" instruction from the start;
- ``chatty``: it says "Sure! Here is the rest of the answer:" and then continues.

So a rescued stream can be checked word for word.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from tierlm.execute.rescue import CONTINUE_INSTRUCTION

KINDS = (
    "healthy",  # a normal answer
    "status",  # `status` with `body`/`headers` for the first `times` requests (None: all)
    "down_for",  # 503 for `seconds` after the first request, then healthy
    "reset",  # read the request, then reset the connection (RST) before any header
    "silent",  # read the request, never answer (until the client gives up)
    "slow_first",  # headers at once, the first token only after `seconds`
    "cut",  # `after` tokens, then close the connection mid-body (chunked body incomplete)
    "stall",  # `after` tokens, then silence with the connection open
    "bad_json",  # `after` tokens, then a chunk that is not JSON, then the rest
    "no_done",  # all tokens and finish_reason, no `[DONE]`; the body ends properly
    "no_finish",  # `after` tokens, no finish_reason, no `[DONE]`; the body ends properly
)
ON_CONTINUE = ("continue", "restart", "restart_nearly", "prefill", "chatty")
CHATTY = "Sure! Here is the rest of the answer:"


def expected_text(tokens: int) -> str:
    """The full healthy answer of ``tokens`` words."""
    return " ".join(f"w{i}" for i in range(tokens))


def word(i: int, on_continue: str = "continue") -> str:
    """Word ``i`` of an answer: ``w{i}``, or a near miss of it for ``restart_nearly``."""
    if on_continue != "restart_nearly":
        return f"w{i}"
    if i == 3:
        return "x3"  # one word changed
    return f"W{i}," if i % 7 == 6 else f"w{i}"  # case and punctuation


def openai_error(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


@dataclass
class Scenario:
    kind: str = "healthy"
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    times: int | None = None
    seconds: float = 0.0
    after: int = 40
    tokens: int = 60
    model: str = "upstream-model"
    text: str | None = None  # a healthy answer with these words instead of w0 w1 ...
    on_continue: str = "continue"
    hold: threading.Event | None = None  # a stream waits for it before its finish chunk

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown scenario kind {self.kind!r}")
        if self.on_continue not in ON_CONTINUE:
            raise ValueError(f"unknown on_continue {self.on_continue!r}")


@dataclass
class _Seen:
    """What one scenario has received."""

    count: int = 0
    first_at: float | None = None
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)  # lower-case names
    times: list[float] = field(default_factory=list)


class FaultyUpstream:
    """The server: start with ``with`` (or :meth:`start`/:meth:`stop`)."""

    def __init__(self) -> None:
        self.scenarios: dict[str, Scenario] = {}
        self.seen: defaultdict[str, _Seen] = defaultdict(_Seen)
        self.statuses: Counter[str] = Counter()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ test side

    def add(self, name: str, scenario: Scenario) -> str:
        """Register ``scenario`` under ``name``; return its OpenAI base URL."""
        self.scenarios[name] = scenario
        return f"http://127.0.0.1:{self.port}/{name}/v1"

    def count(self, name: str) -> int:
        """Chat requests received by ``name`` so far."""
        with self._lock:
            return self.seen[name].count

    def bodies(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.seen[name].bodies)

    def headers(self, name: str) -> list[dict[str, str]]:
        """The headers of each chat request ``name`` received (names in lower case)."""
        with self._lock:
            return list(self.seen[name].headers)

    def request_times(self, name: str) -> list[float]:
        """``time.monotonic()`` of each chat request ``name`` received."""
        with self._lock:
            return list(self.seen[name].times)

    def start(self) -> FaultyUpstream:
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(),), name="faulty-upstream", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("faulty upstream did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self._thread.is_alive():
                raise RuntimeError("faulty upstream did not stop")

    def __enter__(self) -> FaultyUpstream:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ server side

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: that is its right
        finally:
            self._tasks.discard(task)
            if not writer.is_closing():
                writer.close()  # flushes what is buffered, then FIN
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
        }
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        parts = path.strip("/").split("/")
        name = parts[0]
        if method == "GET" and parts[-1] == "models":
            await _send_json(writer, 200, {"object": "list", "data": []})
            return
        scenario = self.scenarios.get(name)
        if scenario is None or parts[-2:] != ["chat", "completions"]:
            await _send_json(writer, 404, openai_error("no such scenario", "not_found", None))
            return
        body = json.loads(raw or b"{}")
        with self._lock:
            seen = self.seen[name]
            seen.count += 1
            seen.bodies.append(body)
            seen.headers.append(headers)
            seen.times.append(time.monotonic())
            if seen.first_at is None:
                seen.first_at = time.monotonic()
            n, first_at = seen.count, seen.first_at
        await _Reply(scenario, body, writer, reader).run(n, first_at)


class _Reply:
    """One answer of one scenario."""

    def __init__(
        self,
        sc: Scenario,
        body: dict[str, Any],
        writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
    ) -> None:
        self.sc = sc
        self.writer = writer
        self.reader = reader
        self.stream = bool(body.get("stream"))
        self.usage_wanted = bool((body.get("stream_options") or {}).get("include_usage"))
        self.start = _continuation_start(body.get("messages") or [], sc.on_continue)
        self.chatty = sc.on_continue == "chatty" and self.start > 0
        self.prompt_tokens = sum(
            len(str(m.get("content") or "").split()) for m in body.get("messages") or []
        )

    async def run(self, n: int, first_at: float) -> None:
        sc, kind = self.sc, self.sc.kind
        if kind == "status" and (sc.times is None or n <= sc.times):
            await _send_json(self.writer, sc.status, sc.body, sc.headers)
        elif kind == "down_for" and time.monotonic() - first_at < sc.seconds:
            await _send_json(
                self.writer, 503, openai_error("down for maintenance", "server_error", None)
            )
        elif kind == "reset":
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.writer.transport.abort()
        elif kind == "silent":
            await self.reader.read()  # until the client closes
        elif self.stream:
            await self._stream()
        else:
            await self._whole()

    def _words(self, upto: int | None = None) -> list[str]:
        given = self.sc.text.split(" ") if self.sc.text is not None else None
        total = len(given) if given is not None else self.sc.tokens
        end = total if upto is None else min(upto, total)
        words = [
            ("" if i == 0 else " ")
            + (given[i] if given is not None else word(i, self.sc.on_continue))
            for i in range(self.start, end)
        ]
        return [CHATTY, *words] if self.chatty else words

    def _usage(self, completion: int) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    async def _whole(self) -> None:
        sc, kind = self.sc, self.sc.kind
        if kind == "slow_first":
            await asyncio.sleep(sc.seconds)
        words = self._words()
        data = json.dumps(
            {
                "id": "chatcmpl-faulty",
                "object": "chat.completion",
                "created": 1,
                "model": sc.model,
                "usage": self._usage(len(words)),
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "".join(words)},
                    }
                ],
            }
        ).encode()
        if kind == "bad_json":
            data = data[: len(data) // 2]
        head = _head(
            200,
            {
                "content-type": "application/json",
                "content-length": str(len(data) * (2 if kind == "cut" else 1)),
            },
        )
        if kind in ("cut", "stall"):
            self.writer.write(head + data[: len(data) // 2])
            await self.writer.drain()
            if kind == "stall":
                await self.reader.read()
            return
        self.writer.write(head + data)
        await self.writer.drain()

    async def _stream(self) -> None:
        sc, kind, w = self.sc, self.sc.kind, self.writer
        w.write(_head(200, {"content-type": "text/event-stream", "transfer-encoding": "chunked"}))
        await w.drain()
        if kind == "slow_first":
            await asyncio.sleep(sc.seconds)
        upto = sc.after if kind in ("cut", "stall", "no_finish") else None
        words = self._words(upto)
        for i, word in enumerate(words):
            if kind == "bad_json" and i == sc.after:
                await _chunk(w, b'data: {"choices": [{"delta": {"content": "GARB\n\n')
            await _chunk(w, _sse(self._delta(word)))
        if kind == "cut":
            w.close()
            return
        if kind == "stall":
            await self.reader.read()
            return
        if sc.hold is not None:
            await asyncio.to_thread(sc.hold.wait, 30)
        if kind != "no_finish":
            await _chunk(w, _sse(self._delta(None, finish="stop")))
            if self.usage_wanted:
                await _chunk(
                    w,
                    _sse(
                        {
                            "id": "chatcmpl-faulty",
                            "model": sc.model,
                            "choices": [],
                            "usage": self._usage(len(words)),
                        }
                    ),
                )
            if kind != "no_done":
                await _chunk(w, b"data: [DONE]\n\n")
        await _chunk(w, b"")  # the last chunk: the body ends properly

    def _delta(self, text: str | None, finish: str | None = None) -> dict[str, Any]:
        delta = {} if text is None else {"content": text}
        return {
            "id": "chatcmpl-faulty",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": self.sc.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }


def _continuation_start(messages: list[dict[str, Any]], on_continue: str) -> int:
    """Where the answer starts: 0, or the number of words of the partial assistant turn that
    this scenario continues (see the module doc)."""
    if on_continue == "prefill" and messages and messages[-1].get("role") == "assistant":
        return len(str(messages[-1].get("content") or "").split())
    if (
        on_continue in ("continue", "chatty")
        and len(messages) >= 2
        and messages[-1].get("content") == CONTINUE_INSTRUCTION
        and messages[-2].get("role") == "assistant"
    ):
        return len(str(messages[-2].get("content") or "").split())
    return 0


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [
        f"HTTP/1.1 {status} X",
        "connection: close",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _send_json(
    writer: asyncio.StreamWriter, status: int, body: Any, headers: dict[str, str] | None = None
) -> None:
    data = json.dumps(body).encode()
    writer.write(
        _head(
            status,
            {
                "content-type": "application/json",
                "content-length": str(len(data)),
                **(headers or {}),
            },
        )
        + data
    )
    await writer.drain()


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()
