"""Backend health, cached briefly so that neither ``/health`` nor routing waits on it.

Routing reads the last known health (never blocking: a stale cache starts one refresh in the
background and the request goes on with what is known); ``/health`` awaits a fresh one when
the cache is older than its time to live.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from tierlm.backends.base import BackendHealth
from tierlm.errors import TierlmError

if TYPE_CHECKING:
    from tierlm.backends.base import Backend

CHECK_TIMEOUT = 3.0  # seconds one backend's health check may take


class HealthCache:
    """Each backend's :class:`BackendHealth`, refreshed at most every ``ttl`` seconds."""

    def __init__(self, backends: dict[str, Backend], *, ttl: float = 5.0) -> None:
        self.backends = backends
        self.ttl = ttl
        self.checked_at = 0.0
        self.last: dict[str, BackendHealth] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def stale(self) -> bool:
        return time.monotonic() - self.checked_at > self.ttl

    def healthy(self) -> dict[str, bool] | None:
        """Backend -> usable, from the cache (``None`` until the first check finished).

        Starts a background refresh when the cache is stale; never waits for it.
        """
        if self.stale:
            self._refresh_soon()
        if not self.last:
            return None
        return {n: h.ok is not False for n, h in self.last.items()}

    def warm(self) -> dict[str, bool] | None:
        if not self.last:
            return None
        return {n: bool(h.loaded) for n, h in self.last.items()}

    async def current(self) -> dict[str, BackendHealth]:
        """Fresh health (awaits a refresh when the cache is stale)."""
        if self.stale:
            self._refresh_soon()
        if self._task is not None:
            await asyncio.shield(self._task)
        return self.last

    def _refresh_soon(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        await self.refresh()

    async def refresh(self, within: float = CHECK_TIMEOUT) -> dict[str, BackendHealth]:
        """Check every backend now, concurrently, each for at most ``within`` seconds."""
        names = list(self.backends)
        results = await asyncio.gather(*(self._check(n, within) for n in names))
        self.last = dict(zip(names, results, strict=True))
        self.checked_at = time.monotonic()
        return self.last

    async def _check(self, name: str, within: float) -> BackendHealth:
        try:
            return await asyncio.wait_for(self.backends[name].health(), within)
        except TimeoutError:
            return BackendHealth(ok=False, detail=f"health check over {within:g} s")
        except TierlmError as e:
            return BackendHealth(ok=False, detail=e.message)

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def to_dict(self) -> dict[str, Any]:
        return {n: h.to_dict() for n, h in self.last.items()}
