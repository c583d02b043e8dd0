"""Where cached answers live: bytes under opaque keys, with a TTL and LRU limits.

- :class:`MemoryStore`: this process only (an ordered dict); the default, and always the home
  of answers to private or sensitive requests.
- :class:`SQLiteStore`: a file on this host (WAL mode), so the cache survives restarts and is
  shared by the processes of one host.
- :class:`RedisStore`: a Redis server (extra ``tierlm[redis]``), shared by gateway replicas.
  Entries expire by Redis's own TTL; ``max_entries``/``max_bytes`` are left to the server's
  ``maxmemory`` and its eviction policy (``allkeys-lru``), which sees every replica's use.
  The cache never takes the gateway down: when Redis fails or takes longer than 1 s, the
  lookup is a miss, the answer is not stored, a warning is logged, and Redis is left alone
  for ``RedisStore.PAUSE_S`` seconds (lookups miss at once instead of each waiting).

The shared stores hold only answers to public requests with nothing sensitive in them (the
cache decides; see :mod:`tierlm.layer0.cache`). The memory and SQLite stores evict the least
recently used entries past ``max_entries`` or ``max_bytes``; no store returns an entry past
its expiry. ``clock`` is injectable for tests.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

Clock = Callable[[], float]
log = logging.getLogger("tierlm.cache")


class Store(Protocol):
    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes) -> None: ...

    def clear(self) -> int: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


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
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
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


class RedisStore:
    PAUSE_S = 5.0  # after a failure, how long lookups miss without asking Redis

    def __init__(
        self, url: str, ttl: float, prefix: str = "tierlm:cache:", clock: Clock = time.monotonic
    ) -> None:
        try:
            import redis
        except ImportError:
            from tierlm.errors import MissingDependency

            raise MissingDependency("the redis cache store", "redis") from None
        self.ttl, self.prefix, self.url, self.clock = ttl, prefix, url, clock
        self._db = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError,)
        self._paused_until = 0.0
        self.failures = 0

    def _failed(self, e: BaseException) -> None:
        self.failures += 1
        self._paused_until = self.clock() + self.PAUSE_S
        log.warning(
            "answer cache: Redis unreachable (%s); cache skipped for %.0f s", e, self.PAUSE_S
        )

    def get(self, key: str) -> bytes | None:
        if self.clock() < self._paused_until:
            return None
        try:
            value = self._db.get(self.prefix + key)
        except self._errors as e:
            self._failed(e)
            return None
        return value if value is None or isinstance(value, bytes) else value.encode()

    def put(self, key: str, value: bytes) -> None:
        if self.clock() < self._paused_until:
            return
        try:
            self._db.set(self.prefix + key, value, px=int(self.ttl * 1000))
        except self._errors as e:
            self._failed(e)

    def _keys(self) -> list[bytes]:
        return list(self._db.scan_iter(match=self.prefix + "*", count=1000))

    def clear(self) -> int:
        keys = self._keys()
        return int(self._db.delete(*keys)) if keys else 0

    def stats(self) -> dict[str, Any]:
        return {"store": "redis", "url": _without_password(self.url), "entries": len(self._keys())}

    def close(self) -> None:
        self._db.close()


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
