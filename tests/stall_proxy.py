"""A TCP proxy on 127.0.0.1 that can stall: bytes from the client are held while it is stalled.

``StallProxy(port)`` forwards each connection to ``127.0.0.1:port`` from an event loop in a
thread of its own. ``stall()`` holds every byte a client sends from then on (the server never
sees the request, the client waits for an answer: a hung or unreachable server); ``flow()``
lets them through again. ``close()`` stops it.
"""

from __future__ import annotations

import asyncio
import threading

from fakes import free_port


class StallProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(timeout=10)
        assert self._server is not None, "the stall proxy did not start"

    def _run(self, ready: threading.Event) -> None:
        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_w}
        await asyncio.gather(
            self._pump(reader, up_w, held=True), self._pump(up_r, writer, held=False)
        )
        self._writers -= {writer, up_w}

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, held: bool
    ) -> None:
        try:
            while data := await src.read(65536):
                if held:
                    await self._flowing.wait()
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    def stall(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def flow(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.set)

    def close(self) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            self._flowing.set()
            for w in list(self._writers):
                w.close()  # each pump then reads the end and stops
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
