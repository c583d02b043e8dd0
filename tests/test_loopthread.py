"""The synchronous API's loop thread: Ctrl-C in the caller stops the work on the loop and lets
its clean-up finish before the caller goes on (``tierlm chat`` then closes the stream)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

from tierlm.loopthread import LoopThread


@pytest.fixture(autouse=True)
def _ctrl_c_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt, as from a terminal (a suite started in the background
    by a script ignores SIGINT)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _interrupt_when(event: threading.Event) -> None:
    """Ctrl-C to this process (the main thread, which waits in ``run``) once ``event`` is set."""

    def go() -> None:
        assert event.wait(10)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=go, daemon=True).start()


def test_ctrl_c_returns_only_after_the_work_has_cleaned_up() -> None:
    loop, entered, cleaned = LoopThread("test-loop"), threading.Event(), []

    async def work() -> None:
        try:
            entered.set()
            await asyncio.sleep(60)
        finally:  # an unwinding stream: its clean-up awaits several times
            for _ in range(5):
                await asyncio.sleep(0.01)
            cleaned.append(True)

    _interrupt_when(entered)
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run(work())
        assert cleaned == [True]
        assert loop.run(asyncio.sleep(0, "still serving")) == "still serving"
    finally:
        loop.stop()


def test_a_stream_interrupted_mid_answer_can_be_closed() -> None:
    """What ``tierlm chat`` does on Ctrl-C: the consumer is cancelled, then the stream closed.
    Closing a generator whose clean-up is still running raised RuntimeError."""
    loop, second, closed = LoopThread("test-loop"), threading.Event(), []

    async def answer() -> AsyncIterator[str]:
        try:
            yield "w1"
            second.set()
            await asyncio.sleep(60)  # the upstream stalls
            yield "w2"
        finally:
            for _ in range(5):  # closing the upstream connection takes a few turns
                await asyncio.sleep(0.01)
            closed.append(True)

    stream = answer()

    async def consume() -> list[str]:
        return [piece async for piece in stream]

    _interrupt_when(second)
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run(consume())
        loop.run(stream.aclose())
        assert closed == [True]
    finally:
        loop.stop()


def test_work_that_raises_systemexit_reaches_the_caller() -> None:
    loop = LoopThread("test-loop")

    async def exits() -> None:
        raise SystemExit(3)

    try:
        with pytest.raises(SystemExit) as caught:
            loop.run(exits())
        assert caught.value.code == 3
        assert loop.run(asyncio.sleep(0, 1)) == 1
    finally:
        loop.stop()
