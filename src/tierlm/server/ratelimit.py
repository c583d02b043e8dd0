"""Rate limits per API key: requests and tokens per minute, in process or in Redis.

An API key may carry ``rpm`` (requests per minute) and ``tpm`` (tokens per minute). Each
limit is a token bucket (constant memory per key): it holds at most the limit, refills at
limit/60 per second, and a request takes 1 from the request bucket and its *cost* from the
token bucket. The cost is what OpenAI charges against a token limit: the larger of the
request's estimated prompt tokens (:func:`~tierlm.signals.task.detect_task`, no tokenizer)
and its ``max_tokens``. A request is admitted only when both buckets hold enough; nothing
is taken from either when it is refused.

A refusal is :class:`RateLimitExceeded` (429) with ``Retry-After`` (whole seconds, rounded
up) and ``retry-after-ms``: the time until both buckets hold enough. A request that costs
more than its key's ``tpm`` can never pass and is a 400 instead. Every answer to a limited
key carries OpenAI's headers, for each limit set: ``x-ratelimit-limit-requests``,
``x-ratelimit-remaining-requests``, ``x-ratelimit-reset-requests`` (time until the bucket is
full again, e.g. ``1.5s``) and the same three for ``-tokens``.

Where the buckets live (``server.rate_limit_url``): unset, in the process
(:class:`RateLimits`; each replica enforces its own); ``redis://...``, in Redis
(:class:`RedisRateLimits`, extra ``tierlm[redis]``), one bucket pair per key shared by every
replica, checked and charged atomically by one Lua script, on the replicas' wall clocks
(keep them in sync: NTP). When Redis cannot be reached the request is admitted (fail open:
the limiter never takes the gateway down) and a warning is logged.

The gateway charges a request after it is parsed and its key's pins are checked, before it is
routed (:meth:`~tierlm.server.gateway.Gateway.admit`). Clocks are injectable (tests).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from tierlm.errors import InvalidRequest, MissingDependency, TierlmError
from tierlm.signals.task import detect_task

if TYPE_CHECKING:
    from tierlm.config.settings import ApiKeyConfig, ServerConfig
    from tierlm.types import ChatRequest

log = logging.getLogger("tierlm.server")
_EPS = 1e-9  # float slack: a client that waited exactly Retry-After is admitted


class RateLimitExceeded(TierlmError):
    """The key's requests or tokens per minute are spent (HTTP 429)."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = {**headers, "retry-after-ms": str(math.ceil(retry_after * 1000))}


def request_cost(req: ChatRequest) -> int:
    """Tokens a request counts against ``tpm``: max(estimated prompt tokens, max_tokens)."""
    return max(detect_task(req).tokens, req.max_tokens or 0)


def _cost(key: ApiKeyConfig, req: ChatRequest) -> int:
    """``req``'s cost against ``key``'s ``tpm`` (0 without one); 400 when it can never pass."""
    if not key.tpm:
        return 0
    cost = request_cost(req)
    if cost > key.tpm:
        raise InvalidRequest(
            f"this request counts {cost} tokens (estimated prompt or max_tokens), more "
            f"than API key '{key.name}' may use in a minute ({key.tpm})"
        )
    return cost


def _headers(unit: str, limit: int, level: float) -> dict[str, str]:
    reset = (limit - level) / (limit / 60.0)
    return {
        f"x-ratelimit-limit-{unit}": str(limit),
        f"x-ratelimit-remaining-{unit}": str(max(int(level + _EPS), 0)),
        f"x-ratelimit-reset-{unit}": f"{round(reset, 3):g}s",
    }


def _verdict(
    key: ApiKeyConfig, wait: float, requests: float | None, tokens: float | None
) -> dict[str, str]:
    """The headers for the buckets' levels after the check; raises when ``wait`` > 0."""
    headers: dict[str, str] = {}
    if key.rpm and requests is not None:
        headers.update(_headers("requests", key.rpm, requests))
    if key.tpm and tokens is not None:
        headers.update(_headers("tokens", key.tpm, tokens))
    if wait > 0.0:
        raise RateLimitExceeded(
            f"API key '{key.name}' is over its rate limit: retry in {wait:.3f}s",
            retry_after=wait,
            headers=headers,
        )
    return headers


class _Bucket:
    """``limit`` units a minute; ``level`` as of ``stamp``."""

    __slots__ = ("level", "limit", "rate", "stamp")

    def __init__(self, limit: int, now: float) -> None:
        self.limit = limit
        self.rate = limit / 60.0
        self.level = float(limit)
        self.stamp = now

    def wait(self, need: float, now: float) -> float:
        """Refill to ``now``; seconds until the bucket holds ``need`` (0 when it does)."""
        self.level = min(self.limit, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        short = need - self.level
        return short / self.rate if short > _EPS else 0.0


class RateLimits:
    """In process: the buckets of every key that has a limit."""

    def __init__(
        self, keys: Iterable[ApiKeyConfig], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        now = clock()
        self._keys: dict[str, tuple[_Bucket | None, _Bucket | None]] = {
            k.name: (
                _Bucket(k.rpm, now) if k.rpm else None,
                _Bucket(k.tpm, now) if k.tpm else None,
            )
            for k in keys
            if k.rpm or k.tpm
        }

    async def admit(self, key: ApiKeyConfig | None, req: ChatRequest) -> dict[str, str]:
        """Charge ``req`` to ``key``'s limits and return the ``x-ratelimit-*`` headers;
        raises :class:`RateLimitExceeded` (or :class:`InvalidRequest` for a request larger
        than the key's ``tpm``) without charging anything."""
        buckets = self._keys.get(key.name) if key is not None else None
        if key is None or buckets is None:
            return {}
        cost = _cost(key, req)
        now = self.clock()
        pairs = [(b, n) for b, n in zip(buckets, (1, cost), strict=True) if b is not None]
        wait = max(b.wait(need, now) for b, need in pairs)
        if wait == 0.0:
            for b, need in pairs:
                b.level -= need
        requests, tokens = buckets
        return _verdict(
            key, wait, requests.level if requests else None, tokens.level if tokens else None
        )

    async def aclose(self) -> None:
        return None


# KEYS: the request and token buckets; ARGV: now, rpm, tpm (0: none), cost. Returns the wait
# and both levels after the check, as strings (Redis would truncate numbers to integers).
_LUA = """
local now = tonumber(ARGV[1])
local limits = {tonumber(ARGV[2]), tonumber(ARGV[3])}
local needs = {1, tonumber(ARGV[4])}
local levels = {0, 0}
local wait = 0
for i = 1, 2 do
  if limits[i] > 0 then
    local rate = limits[i] / 60
    local b = redis.call('HMGET', KEYS[i], 'level', 'stamp')
    local level = tonumber(b[1]) or limits[i]
    local stamp = tonumber(b[2]) or now
    level = math.min(limits[i], level + math.max(0, now - stamp) * rate)
    levels[i] = level
    local short = needs[i] - level
    if short > 1e-9 then wait = math.max(wait, short / rate) end
  end
end
for i = 1, 2 do
  if limits[i] > 0 then
    if wait == 0 then levels[i] = levels[i] - needs[i] end
    redis.call('HSET', KEYS[i], 'level', tostring(levels[i]), 'stamp', tostring(now))
    redis.call('EXPIRE', KEYS[i], 120)
  end
end
return {tostring(wait), tostring(levels[1]), tostring(levels[2])}
"""


class RedisRateLimits:
    """In Redis, shared by every replica that points at it (same semantics as in process)."""

    def __init__(
        self,
        keys: Iterable[ApiKeyConfig],
        url: str,
        clock: Callable[[], float] = time.time,
        prefix: str = "tierlm:ratelimit:",
    ) -> None:
        try:
            from redis.asyncio import Redis
        except ImportError:
            raise MissingDependency("rate limits in Redis", "redis") from None
        self.clock = clock
        self.prefix = prefix
        self._limited = {k.name for k in keys if k.rpm or k.tpm}
        self._redis = Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
        self._script: Any = self._redis.register_script(_LUA)

    async def admit(self, key: ApiKeyConfig | None, req: ChatRequest) -> dict[str, str]:
        """As :meth:`RateLimits.admit`; admits (and logs) when Redis cannot be reached."""
        from redis.exceptions import RedisError

        if key is None or key.name not in self._limited:
            return {}
        cost = _cost(key, req)
        names = [f"{self.prefix}{key.name}:requests", f"{self.prefix}{key.name}:tokens"]
        args = [repr(self.clock()), key.rpm or 0, key.tpm or 0, cost]
        try:
            wait, requests, tokens = await self._script(keys=names, args=args)
        except RedisError as e:
            log.warning("rate limits: Redis unreachable, request admitted unchecked: %s", e)
            return {}
        return _verdict(key, float(wait), float(requests), float(tokens))

    async def aclose(self) -> None:
        await self._redis.aclose()


def open_limits(server: ServerConfig) -> RateLimits | RedisRateLimits:
    """The limiter ``server.rate_limit_url`` asks for (in process when unset)."""
    if server.rate_limit_url:
        return RedisRateLimits(server.api_keys, server.rate_limit_url)
    return RateLimits(server.api_keys)
