"""The synchronous API's event loop: one loop on a daemon thread, started on first use.

:meth:`LoopThread.run` runs a coroutine there and returns its result in the caller's thread.

- A ``SystemExit`` or ``KeyboardInterrupt`` raised by the work on the loop (rich raises
  ``SystemExit`` when stdout's reader has gone: ``tierlm chat | head``) is carried to the
  caller's thread. Left alone, asyncio would let it end the loop thread, and the caller would
  wait for the result forever.
- Ctrl-C in the caller's thread cancels the work on the loop and waits (at most 5 s) until its
  clean-up has run, so the caller never goes on while, say, a stream's generator is still
  unwinding (closing it then would fail).
- :meth:`LoopThread.stop` stops and closes the loop; the next :meth:`run` starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str = "tierlm-router") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def run(self, aw: Awaitable[T]) -> T:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, daemon=True, name=self.name
            )
            self._thread.start()
        loop, started, done = self._loop, threading.Event(), threading.Event()
        task: list[asyncio.Task[Any]] = []

        async def work() -> T:
            current = asyncio.current_task()
            assert current is not None
            task.append(current)
            started.set()
            try:
                return await _wrap(aw)
            finally:
                done.set()

        async def cancel() -> None:
            # queued behind the work's first step: if the work has not begun by now, it never
            # will (Ctrl-C came before it was queued)
            if task and not done.is_set():
                task[0].cancel()

        try:
            return asyncio.run_coroutine_threadsafe(work(), loop).result()
        except _Escaped as e:
            raise e.exc from None
        except BaseException:  # Ctrl-C in the caller's thread, perhaps while submitting
            with contextlib.suppress(TimeoutError):  # a loop blocked for 5 s: give up waiting
                asyncio.run_coroutine_threadsafe(cancel(), loop).result(timeout=5)
                if started.is_set():
                    done.wait(timeout=5)
            raise

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._loop.close()
            self._loop = None


class _Escaped(Exception):
    """A ``SystemExit`` or ``KeyboardInterrupt`` from the loop, on its way to the caller."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(repr(exc))
        self.exc = exc


async def _wrap(aw: Awaitable[T]) -> T:
    try:
        return await aw
    except (SystemExit, KeyboardInterrupt) as e:
        raise _Escaped(e) from e
