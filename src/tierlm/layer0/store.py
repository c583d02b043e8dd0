"""Where cached answers live: bytes under opaque keys, with a TTL and LRU limits.

- :class:`MemoryStore`: this process only (an ordered dict); the default, and always the home
  of answers to private or sensitive requests.
- :class:`SQLiteStore`: a file on this host (WAL mode), so the cache survives restarts and is
  shared by the processes of one host.
- :class:`RedisStore`: a Redis server (extra ``tierlm[redis]``), shared by gateway replicas.
  Entries expire by Redis's own TTL; ``max_entries``/``max_bytes`` are left to the server's
  ``maxmemory`` and its eviction policy (``allkeys-lru``), which sees every replica's use.

The shared stores hold only answers to public requests with nothing sensitive in them (the
cache decides; see :mod:`tierlm.layer0.cache`). The memory and SQLite stores evict the least
recently used entries past ``max_entries`` or ``max_bytes``; no store returns an entry past
its expiry. ``clock`` is injectable for tests.

**Never on the event loop.** The memory store is called directly (a lookup is a dict read).
The SQLite and Redis stores are reached through a :class:`SharedStore` (:func:`open_shared`):
every call is awaited (Redis through ``redis.asyncio``; SQLite in one worker thread of its
own), none waits longer than ``timeout`` (0.5 s), and a failure (timeout, refused connection,
a locked file) is a miss, or a write not made, never an error to the caller. After a failure the
store is left alone for ``retry_after`` (5 s): every call is then a miss at once, and the one
warning logged says so. Only the admin calls (bounded by 30 s: they walk every entry) report a
failure: ``clear`` raises :class:`~tierlm.errors.BackendUnavailable`, ``stats`` says ``error``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from tierlm.layer0.config import CacheConfig

Clock = Callable[[], float]
T = TypeVar("T")
log = logging.getLogger(__name__)
TIMEOUT = 0.5  # the longest a shared store is waited on
RETRY_AFTER = 5.0  # after a failure, a shared store is left alone this long
ADMIN_TIMEOUT = 30.0  # clear and stats walk every entry


class MemoryStore:
    def __init__(
        self, ttl: float, max_entries: int, max_bytes: int, clock: Clock = time.monotonic
    ) -> None:
        self.ttl, self.max_entries, self.max_bytes, self.clock = ttl, max_entries, max_bytes, clock
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self.evictions = 0

    def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] <= self.clock():
            self._drop(key)
            return None
        self._data.move_to_end(key)
        return item[1]

    def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        if key in self._data:
            self._drop(key)
        self._data[key] = (self.clock() + self.ttl, value)
        self._bytes += len(value)
        while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._data)))
            self.evictions += 1

    def _drop(self, key: str) -> None:
        _, value = self._data.pop(key)
        self._bytes -= len(value)

    def clear(self) -> int:
        n = len(self._data)
        self._data.clear()
        self._bytes = 0
        return n

    def stats(self) -> dict[str, Any]:
        return {
            "store": "memory",
            "entries": len(self._data),
            "bytes": self._bytes,
            "evictions": self.evictions,
        }

    def close(self) -> None:
        return None


class SQLiteStore:
    _SCHEMA = (
        "CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
        "expires REAL NOT NULL, used REAL NOT NULL, size INTEGER NOT NULL)",
        "CREATE INDEX IF NOT EXISTS cache_used ON cache (used)",
    )

    def __init__(
        self,
        path: str | Path,
        ttl: float,
        max_entries: int,
        max_bytes: int,
        clock: Clock = time.time,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ttl, self.max_entries, self.max_bytes, self.clock = ttl, max_entries, max_bytes, clock
        self._db = sqlite3.connect(
            self.path, timeout=1.0, check_same_thread=False, isolation_level=None
        )
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        for stmt in self._SCHEMA:
            self._db.execute(stmt)

    def get(self, key: str) -> bytes | None:
        now = self.clock()
        with self._lock:
            row = self._db.execute(
                "SELECT value, expires FROM cache WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                return None
            if row[1] <= now:
                self._db.execute("DELETE FROM cache WHERE key = ?", (key,))
                return None
            self._db.execute("UPDATE cache SET used = ? WHERE key = ?", (self._tick(now), key))
        return bytes(row[0])

    def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        now = self.clock()
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO cache VALUES (?, ?, ?, ?, ?)",
                (key, value, now + self.ttl, self._tick(now), len(value)),
            )
            self._evict(now)

    def _tick(self, now: float) -> float:
        """A use time later than every other (the clock alone may tie)."""
        (last,) = self._db.execute("SELECT max(used) FROM cache").fetchone()
        return now if last is None or now > last else float(last) + 1e-6

    def _evict(self, now: float) -> None:
        self._db.execute("DELETE FROM cache WHERE expires <= ?", (now,))
        n, size = self._db.execute("SELECT count(*), coalesce(sum(size), 0) FROM cache").fetchone()
        while n > self.max_entries or size > self.max_bytes:
            row = self._db.execute("SELECT key, size FROM cache ORDER BY used LIMIT 1").fetchone()
            self._db.execute("DELETE FROM cache WHERE key = ?", (row[0],))
            n, size = n - 1, size - row[1]

    def clear(self) -> int:
        with self._lock:
            return int(self._db.execute("DELETE FROM cache").rowcount)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            n, size = self._db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM cache"
            ).fetchone()
        return {"store": "sqlite", "path": str(self.path), "entries": n, "bytes": size}

    def close(self) -> None:
        with self._lock:
            self._db.close()


class SharedStore:
    """A store across I/O, as the event loop sees it: awaited calls bounded by ``timeout``;
    a failure is a miss (``get``), a write not made (``put``), and a pause of ``retry_after``
    (one warning). Subclasses say how (``_get`` ...) and which exceptions mean a failure."""

    kind = "shared"
    _failures: tuple[type[Exception], ...] = (OSError,)  # TimeoutError is an OSError

    def __init__(
        self,
        timeout: float = TIMEOUT,
        retry_after: float = RETRY_AFTER,
        clock: Clock = time.monotonic,
    ) -> None:
        self.timeout, self.retry_after, self.clock = timeout, retry_after, clock
        self.failures = 0
        self._down_until = 0.0

    @property
    def available(self) -> bool:
        """False while the store is left alone after a failure."""
        return self.clock() >= self._down_until

    async def get(self, key: str) -> bytes | None:
        return await self._guarded("read", lambda: self._get(key), None)

    async def put(self, key: str, value: bytes) -> None:
        await self._guarded("write", lambda: self._put(key, value), None)

    async def clear(self) -> int:
        from tierlm.errors import BackendUnavailable

        try:
            async with asyncio.timeout(ADMIN_TIMEOUT):
                return await self._clear()
        except self._failures as e:
            raise BackendUnavailable(f"the {self.kind} cache store: {_why(e)}") from e

    async def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"store": self.kind, **self._where()}
        try:
            async with asyncio.timeout(ADMIN_TIMEOUT):
                return {**out, **await self._stats()}
        except self._failures as e:
            return {**out, "error": _why(e)}

    async def _guarded(self, what: str, op: Callable[[], Awaitable[T]], default: T) -> T:
        if not self.available:
            return default
        try:
            async with asyncio.timeout(self.timeout):
                return await op()
        except self._failures as e:
            self.failures += 1
            if self.available:  # the first failure of this pause: say it once
                log.warning(
                    "answer cache: %s store unreachable on %s (%s); misses for the next %g s",
                    self.kind,
                    what,
                    _why(e),
                    self.retry_after,
                )
            self._down_until = self.clock() + self.retry_after
            return default

    async def _get(self, key: str) -> bytes | None:
        raise NotImplementedError

    async def _put(self, key: str, value: bytes) -> None:
        raise NotImplementedError

    async def _clear(self) -> int:
        raise NotImplementedError

    async def _stats(self) -> dict[str, Any]:
        raise NotImplementedError

    def _where(self) -> dict[str, Any]:
        return {}

    async def aclose(self) -> None:
        raise NotImplementedError


class ThreadedSQLite(SharedStore):
    """A :class:`SQLiteStore` called in one worker thread of its own (a write may wait on
    another process's lock; the event loop must not)."""

    kind = "sqlite"
    _failures = (OSError, sqlite3.Error)

    def __init__(self, store: SQLiteStore, **kw: Any) -> None:
        super().__init__(**kw)
        self.store = store
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tierlm-cache-sqlite")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _get(self, key: str) -> bytes | None:
        return await self._run(self.store.get, key)

    async def _put(self, key: str, value: bytes) -> None:
        await self._run(self.store.put, key, value)

    async def _clear(self) -> int:
        return await self._run(self.store.clear)

    async def _stats(self) -> dict[str, Any]:
        return await self._run(self.store.stats)

    async def aclose(self) -> None:
        await self._run(self.store.close)
        self._pool.shutdown(wait=False)


class RedisStore(SharedStore):
    """A Redis server, through ``redis.asyncio``."""

    kind = "redis"

    def __init__(self, url: str, ttl: float, prefix: str = "tierlm:cache:", **kw: Any) -> None:
        try:
            from redis.asyncio import Redis
            from redis.exceptions import RedisError
        except ImportError:
            from tierlm.errors import MissingDependency

            raise MissingDependency("the redis cache store", "redis") from None
        super().__init__(**kw)
        self._failures = (OSError, RedisError)
        self.ttl, self.prefix, self.url = ttl, prefix, url
        t = self.timeout
        self._db = Redis.from_url(url, socket_connect_timeout=t, socket_timeout=t)

    async def _get(self, key: str) -> bytes | None:
        value = await self._db.get(self.prefix + key)
        return value if value is None or isinstance(value, bytes) else value.encode()

    async def _put(self, key: str, value: bytes) -> None:
        await self._db.set(self.prefix + key, value, px=int(self.ttl * 1000))

    async def _keys(self) -> list[bytes]:
        return [k async for k in self._db.scan_iter(match=self.prefix + "*", count=1000)]

    async def _clear(self) -> int:
        keys = await self._keys()
        return int(await self._db.delete(*keys)) if keys else 0

    async def _stats(self) -> dict[str, Any]:
        return {"entries": len(await self._keys())}

    def _where(self) -> dict[str, Any]:
        return {"url": _without_password(self.url)}

    async def aclose(self) -> None:
        await self._db.aclose()


def open_shared(cfg: CacheConfig, data_dir: Path, clock: Clock | None) -> SharedStore | None:
    """The store ``cache.store`` names, when it is not this process's memory."""
    args = (cfg.ttl_seconds, cfg.max_entries, cfg.max_bytes)
    if cfg.store == "sqlite":
        path = Path(cfg.path) if cfg.path else data_dir / "cache.sqlite3"
        return ThreadedSQLite(SQLiteStore(path, *args, clock=clock or time.time))
    if cfg.store == "redis":
        assert cfg.redis_url is not None
        return RedisStore(cfg.redis_url, cfg.ttl_seconds)
    return None


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
