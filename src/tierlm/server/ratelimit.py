"""Rate limits per API key: requests and tokens per minute, in process.

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

The gateway charges a request after it is parsed and its key's pins are checked, before it is
routed (:meth:`~tierlm.server.gateway.Gateway.admit`). The clock is injectable (tests).
Limits hold per process: several replicas each enforce their own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from tierlm.errors import InvalidRequest, TierlmError
from tierlm.signals.task import detect_task

if TYPE_CHECKING:
    from tierlm.config.settings import ApiKeyConfig
    from tierlm.types import ChatRequest

_EPS = 1e-9  # float slack: a client that waited exactly Retry-After is admitted


class RateLimitExceeded(TierlmError):
    """The key's requests or tokens per minute are spent (HTTP 429)."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = {**headers, "retry-after-ms": str(math.ceil(retry_after * 1000))}


class _Bucket:
    """``limit`` units a minute; ``level`` as of ``stamp``."""

    __slots__ = ("level", "limit", "rate", "stamp")

    def __init__(self, limit: int, now: float) -> None:
        self.limit = limit
        self.rate = limit / 60.0
        self.level = float(limit)
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.limit, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self, need: float) -> float:
        """Seconds until the bucket holds ``need`` (0 when it does)."""
        short = need - self.level
        return short / self.rate if short > _EPS else 0.0

    def headers(self, unit: str) -> dict[str, str]:
        reset = (self.limit - self.level) / self.rate
        return {
            f"x-ratelimit-limit-{unit}": str(self.limit),
            f"x-ratelimit-remaining-{unit}": str(max(int(self.level + _EPS), 0)),
            f"x-ratelimit-reset-{unit}": f"{round(reset, 3):g}s",
        }


def request_cost(req: ChatRequest) -> int:
    """Tokens a request counts against ``tpm``: max(estimated prompt tokens, max_tokens)."""
    return max(detect_task(req).tokens, req.max_tokens or 0)


class RateLimits:
    """The buckets of every key that has a limit; :meth:`admit` charges one request."""

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

    def admit(self, key: ApiKeyConfig | None, req: ChatRequest) -> dict[str, str]:
        """Charge ``req`` to ``key``'s limits and return the ``x-ratelimit-*`` headers;
        raises :class:`RateLimitExceeded` (or :class:`InvalidRequest` for a request larger
        than the key's ``tpm``) without charging anything."""
        buckets = self._keys.get(key.name) if key is not None else None
        if key is None or buckets is None:
            return {}
        requests, tokens = buckets
        now = self.clock()
        cost = request_cost(req) if tokens is not None else 0
        if tokens is not None and cost > tokens.limit:
            raise InvalidRequest(
                f"this request counts {cost} tokens (estimated prompt or max_tokens), more "
                f"than API key '{key.name}' may use in a minute ({tokens.limit})"
            )
        wait = 0.0
        for bucket, need in ((requests, 1), (tokens, cost)):
            if bucket is not None:
                bucket.refill(now)
                wait = max(wait, bucket.wait(need))
        if wait == 0.0:
            for bucket, need in ((requests, 1), (tokens, cost)):
                if bucket is not None:
                    bucket.level -= need
        headers = _headers(requests, tokens)
        if wait > 0.0:
            raise RateLimitExceeded(
                f"API key '{key.name}' is over its rate limit: retry in {wait:.3f}s",
                retry_after=wait,
                headers=headers,
            )
        return headers


def _headers(requests: _Bucket | None, tokens: _Bucket | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if requests is not None:
        out.update(requests.headers("requests"))
    if tokens is not None:
        out.update(tokens.headers("tokens"))
    return out
